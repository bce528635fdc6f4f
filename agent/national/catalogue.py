"""National catalogue transactions 1301-1319, answered from the catalogue bundle the agent holds
(``PolicyStore.document("catalogue")``, pushed by the centre and verified like every bundle).

The bundle is one whole document per area, so its sequence number is the version: ``ver`` is the
bundle's ``seq``. A HIS that sends the ``ver`` it holds gets nothing when it is current and the whole
catalogue kind otherwise (the agent keeps only the current bundle, so it cannot send a difference);
1312/1318/1319 take ``updt_time`` the same way (rows changed after it: all rows of a newer bundle).
Answers are paged (``page_num``, ``page_size``) and carry the rows inline: the platform's 1301-1311
answer a file name for 9102 download, which the agent does not serve.

1304, 1307-1311 and 1313-1317 answer the national code lists the catalogue document may carry
(``protocol.catalogue_lists``: ethnic medicines, ICD-10 diseases, ICD-9-CM-3 operations, chronic and
special diseases, disease-group and day-surgery lists, tumour morphology, TCM diseases and syndromes,
hospital matches), held by the policy store in a table of their own and paged there, each row as the
centre published it with the bundle's ``ver`` and ``updt_time``. 1316 and 1317 answer the same list, the
hospital's own item codes matched to national codes, and only this agent's hospital's rows
(``fixmedins_code`` in agent.json): the area's bundle carries every hospital's.

A kind the bundle does not hold (a list it does not carry, no matches for this hospital, or a drug
class with no items) is an error, ``catalogue_not_held``, never an empty success: a HIS that replaced
its catalogue with an empty one would refuse every item, or code every diagnosis against nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from protocol.catalogue_lists import LISTS, ListSpec
from protocol.records import fen_to_text

from .envelope import Envelope, National
from .fields import Fields, NationalError

__all__ = ["CATALOGUE_KINDS", "CATALOGUE_TRANSACTIONS"]

#: infno → (what it downloads, the bundle's ``list_type`` values; None: a national list, ``LIST_OF``).
CATALOGUE_KINDS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "1301": ("western and Chinese patent drugs", ("101", "102")),
    "1302": ("Chinese herbal pieces", ("103",)),
    "1303": ("hospital preparations", ("104",)),
    "1304": ("ethnic medicines", None),
    "1305": ("medical service items", ("201",)),
    "1306": ("medical consumables", ("301",)),
    "1307": ("diseases and diagnoses", None),
    "1308": ("operations and procedures", None),
    "1309": ("outpatient chronic and special diseases", None),
    "1310": ("diseases paid by disease group", None),
    "1311": ("day-surgery diseases", None),
    "1312": ("insurance catalogue items (query)", ("101", "102", "103", "104", "201", "301")),
    "1313": ("tumour morphology", None),
    "1314": ("TCM diseases", None),
    "1315": ("TCM syndromes", None),
    "1316": ("hospital-to-insurance catalogue matches", None),
    "1317": ("institution catalogue matches", None),
    "1318": ("price ceilings (query)", ("101", "102", "103", "104", "201", "301")),
    "1319": ("self-pay-first ratios (query)", ("101", "102", "103", "104", "201", "301")),
}
#: National ``chrgitm_lv``: 01 class A, 02 class B, 03 class C.
_CHRGITM_LV = {"A": "01", "B": "02", "C": "03"}
#: infno → the national list (``protocol.catalogue_lists``) it answers, for the kinds that are no items.
LIST_OF = {infno: spec for spec in LISTS.values() for infno in spec.infnos}
MAX_PAGE_SIZE = 5000


def _not_held(infno: str, why: str) -> NationalError:
    name = CATALOGUE_KINDS[infno][0]
    return NationalError(
        [
            (
                "infno",
                f"catalogue_not_held: {infno} ({name}) cannot be answered: {why}; download it from the "
                "platform, or ask the medical-insurance bureau to publish it in the catalogue bundle",
            )
        ]
    )


def _row(infno: str, item: dict[str, Any], hosp_lv: str, ver: str, updt_time: str) -> dict[str, Any]:
    ceiling = (item.get("price_ceiling") or {}).get(hosp_lv)
    base = {"med_list_codg": item["code"], "hilist_code": item["code"]}
    if infno == "1318":
        return base | {
            "hilist_name": item.get("name"),
            "hilist_lmtpric_type": "1",
            "hilist_pric_uplmt_amt": fen_to_text(ceiling) if ceiling is not None else None,
            "medins_lv": hosp_lv,
            "vali_flag": "1",
            "updt_time": updt_time,
        }
    if infno == "1319":
        return base | {
            "hilist_name": item.get("name"),
            "selfpay_prop_type": "1",
            "selfpay_prop": item.get("self_pay_ratio"),
            "vali_flag": "1",
            "updt_time": updt_time,
        }
    return base | {
        "hilist_name": item.get("name"),
        "list_type": item.get("list_type"),
        "chrgitm_lv": _CHRGITM_LV.get(item.get("class") or "", None),
        "hilist_pric_uplmt_amt": fen_to_text(ceiling) if ceiling is not None else None,
        "selfpay_prop": item.get("self_pay_ratio"),
        "drug_class": item.get("drug_class"),
        "vali_flag": "1",
        "ver": ver,
        "updt_time": updt_time,
    }


async def download(nat: National, env: Envelope) -> dict[str, Any]:
    infno = env.infno
    inp = Fields(env.input, "input")
    d = inp.child("data")
    if d is None:
        inp.check()
    assert d is not None
    ver = d.text("ver", required=False, max_len=64)
    updt_time = d.date_time("updt_time", required=False)
    code = d.text("hilist_code", required=False, max_len=50) or d.text(
        "med_list_codg", required=False, max_len=50
    )
    for ignored in ("query_date", "insu_admdvs", "begndate", "vali_flag", "medins_lv"):
        d.text(ignored, required=False, max_len=64)
    page_num = d.integer("page_num", low=1, high=10**6) or 1
    page_size = d.integer("page_size", low=1, high=MAX_PAGE_SIZE) or 1000
    _name, list_types = CATALOGUE_KINDS[infno]
    spec = LIST_OF.get(infno)
    asked_for = d.text("fixmedins_code", required=False, max_len=30)
    if spec is not None and spec.section == "matches" and asked_for not in (None, nat.config.fixmedins_code):
        d.add("fixmedins_code", f"this agent answers the matches of {nat.config.fixmedins_code} only")
    if spec is not None and spec.code != "med_list_codg":
        # A list is filtered by its own code field (diag_code, …); a hospital's match by its own code.
        own = d.text(spec.code, required=False, max_len=150)
        code = own or (None if spec.section == "matches" else code)
    inp.check()
    doc = nat.policy.document("catalogue") if nat.policy is not None else None
    held = nat.policy.held().get("catalogue") if nat.policy is not None else None
    if doc is None or held is None or nat.policy is None:
        raise _not_held(
            infno, "no catalogue bundle has reached this agent yet (GET /v1/status shows the bundles)"
        )
    seq = str(held["seq"])
    created = str(held.get("created") or "")
    try:
        bundle_time = dt.datetime.fromisoformat(created.replace("Z", "+00:00")).astimezone()
        bundle_time_text = bundle_time.strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        bundle_time_text = created
    current = ver == seq or (updt_time is not None and updt_time.replace("T", " ")[:19] >= bundle_time_text)
    if spec is not None:
        return _list_page(nat, infno, spec, code, current, seq, bundle_time_text, page_num, page_size)
    assert list_types is not None
    items = [i for i in doc.get("items", []) if i.get("list_type") in list_types]
    if infno == "1318":
        items = [i for i in items if i.get("price_ceiling")]
    elif infno == "1319":
        items = [i for i in items if i.get("self_pay_ratio") or i.get("class") == "B"]
    if not items:
        raise _not_held(infno, f"the catalogue bundle (seq {seq}) holds no items of this kind")
    if code:
        items = [i for i in items if i.get("code") == code]
    if current:
        items = []  # the HIS holds this bundle's catalogue already
    hosp_lv = nat.config.hosp_lv or "0"
    rows = [_row(infno, i, hosp_lv, seq, bundle_time_text) for i in sorted(items, key=lambda i: i["code"])]
    start = (page_num - 1) * page_size
    return _page(seq, bundle_time_text, len(rows), page_num, page_size, rows[start : start + page_size])


def _page(
    ver: str, updt_time: str, total: int, page_num: int, page_size: int, data: list[dict[str, Any]]
) -> dict[str, Any]:
    pages = max(1, -(-total // page_size))
    return {
        "ver": ver,
        "updt_time": updt_time,
        "recordCounts": total,
        "pageNum": page_num,
        "pageSize": page_size,
        "pages": pages,
        "firstPage": page_num == 1,
        "lastPage": page_num >= pages,
        "data": data,
    }


def _list_page(
    nat: National,
    infno: str,
    spec: ListSpec,
    code: str | None,
    current: bool,
    ver: str,
    updt_time: str,
    page_num: int,
    page_size: int,
) -> dict[str, Any]:
    """One page of a national list, read from the policy store's table (never the whole list)."""
    assert nat.policy is not None
    hospital = ""
    if spec.section == "matches":
        hospital = nat.config.fixmedins_code or ""
        if not hospital:
            raise _not_held(infno, "this agent has no fixmedins_code in agent.json, so it has no matches")
    try:
        total, rows = nat.policy.catalogue_list(
            spec.section,
            hospital=hospital,
            code=code,
            limit=0 if current else page_size,
            offset=(page_num - 1) * page_size,
        )
    except KeyError:
        whose = f" for hospital {hospital}" if hospital else ""
        raise _not_held(infno, f"the catalogue bundle (seq {ver}) carries no {spec.what}{whose}") from None
    if current:
        total = 0  # the HIS holds this bundle's list already
    data = [row | {"ver": ver, "updt_time": updt_time} for row in rows]
    return _page(ver, updt_time, total, page_num, page_size, data)


#: Read-only, computed again on a retry.
CATALOGUE_TRANSACTIONS = {infno: (download, False) for infno in CATALOGUE_KINDS}
