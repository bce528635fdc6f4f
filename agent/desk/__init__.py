"""The desk pages the agent serves (issue 15): the cashier's and the doctor's screens, embeddable in a HIS.

``routes`` holds the pages and the HIS's bill hand-over, ``auth`` the sessions and CSRF, ``bills`` the
pending bills and the settlement body built from one, ``i18n`` the Chinese and English labels and the
refusals a cashier acts on. Contract: ``docs/DESK.md``.
"""

from .routes import PREFIX, add_desk_routes

__all__ = ["PREFIX", "add_desk_routes"]
