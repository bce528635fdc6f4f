// A form's buttons go inactive once it is sent: a double click sends one request (the agent also
// answers a repeated settlement with its first receipt, by the bill's his_setl_no).
document.querySelectorAll("form").forEach(function (form) {
  form.addEventListener("submit", function () {
    form.querySelectorAll("button").forEach(function (button) {
      window.setTimeout(function () {
        button.disabled = true;
        if (button.getAttribute("data-busy")) { button.textContent = button.getAttribute("data-busy"); }
      }, 0);
    });
  });
});
