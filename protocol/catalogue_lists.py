"""The national code lists a ``catalogue`` document may carry besides its items, for the national
catalogue downloads 1304, 1307-1311 and 1313-1317 an agent answers its HIS from the bundle.

Each list is an optional top-level section of the catalogue document, a list of rows whose fields are
the national platform's own names (``diag_code``, ``oprn_oprt_code``, ``opsp_dise_code``, …), so an
agent answers a row as it was published, adding only the bundle's ``ver`` and ``updt_time``. The rows
are validated here, by the same code when the centre imports the document and when an agent applies the
bundle, because a HIS that downloads a malformed code list would code every later diagnosis or
operation against it: every problem names its row (``diseases[3].diag_code``).

Common to every row: ``vali_flag`` ``"1"`` valid (the default) or ``"0"`` no longer valid (kept so a HIS
can retire a code it holds), ``begndate``/``enddate`` real ``yyyy-MM-dd`` dates with the end not before
the beginning, ``memo`` up to 500 characters; unknown fields are refused (a typo must not silently drop a
column). A row's key (its code; for ``matches`` the hospital, its own item code and the beginning date)
appears once.

``matches`` is the hospital side (1316 and 1317): each row names the hospital (``fixmedins_code``)
whose own item code (``medins_list_codg``) is matched to the national code (``med_list_codg``), so the
area's one bundle carries every hospital's matches and each agent answers only its own hospital's.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .document import AREA, Checker, join, kind

__all__ = ["LISTS", "MAX_LIST_ROWS", "MAX_MATCH_ROWS", "ListSpec", "check_lists"]

#: A code list (ICD-10 has about 33,000 national codes, ICD-9-CM-3 about 13,000); matches are per
#: hospital of the area, so they may be many more (the catalogue's own ``MAX_ITEMS``).
MAX_LIST_ROWS = 100_000
MAX_MATCH_ROWS = 500_000

_ITEM_CODE = re.compile(r"^[A-Za-z0-9]{6,50}$")
#: ICD-10 with the national extension (``K35.8``, ``K35.800``, ``I10.x00``, ``J06.900x001``).
_ICD10 = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Za-z]{1,8})?$")
#: ICD-9-CM-3 with the national extension (``47.09``, ``47.0901``, ``00.6600x005``).
_ICD9CM3 = re.compile(r"^[0-9]{2}(\.[0-9A-Za-z]{1,10})?$")
#: Outpatient chronic and special diseases: a letter and five digits (``M00500``, ``M03900``).
_OPSP = re.compile(r"^[A-Z][0-9]{5}$")
#: ICD-O-3 morphology: M, four digits, a slash and the behaviour code (``M8140/3``).
_MORPHOLOGY = re.compile(r"^M[0-9]{4}/[0-9]$")
#: TCM disease and syndrome codes (GB/T 15657: ``A04.01.03``, ``B04.01.02.01``, ``BNG070``).
_TCM = re.compile(r"^[A-Z][A-Z0-9]{0,9}(\.[0-9A-Z]{1,4}){0,6}$")
#: A group or list code the bureau assigns (disease groups, day surgery).
_LOCAL = re.compile(r"^[A-Za-z0-9._-]{1,30}$")
_HOSPITAL = re.compile(r"^[A-Z][0-9]{11}$")
_MEDINS_CODE = re.compile(r"^[A-Za-z0-9._-]{1,150}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_LIST_TYPES = ("101", "102", "103", "104", "201", "301")

_COMMON = ("vali_flag", "begndate", "enddate", "memo")


@dataclass(frozen=True, slots=True)
class ListSpec:
    """One code list: the section, the transactions answering it, its key and its national fields."""

    section: str
    infnos: tuple[str, ...]
    what: str
    code: str  # the row's code field (the key, and what a HIS filters by)
    code_pattern: re.Pattern[str]
    code_hint: str
    name: str  # the row's name field, required
    optional: tuple[str, ...]  # further national text fields
    codes: Mapping[str, tuple[re.Pattern[str], str]] = field(default_factory=dict)  # optional code fields
    max_rows: int = MAX_LIST_ROWS


_DIAG_CHAPTERS = ("cpr", "cpr_code_scp", "cpr_name", "sec_code_scp", "sec_name", "cgy_code", "cgy_name")
_OPRN_QUALIFIER = {"qua_oprn_oprt_code": (_ICD9CM3, "is not an ICD-9-CM-3 operation code like 47.0901")}

LISTS: Mapping[str, ListSpec] = MappingProxyType(
    {
        s.section: s
        for s in (
            ListSpec(
                "ethnic_drugs", ("1304",), "ethnic medicines", "med_list_codg", _ITEM_CODE,
                "must be 6-50 letters and digits (the national drug code)", "drug_prodname",
                ("drug_genname", "ethdrug_type", "dosform", "drug_spec", "prodentp_name", "aprvno"),
            ),
            ListSpec(
                "diseases", ("1307",), "diseases and diagnoses (ICD-10)", "diag_code", _ICD10,
                "is not an ICD-10 diagnosis code like K35.8 or I10.x00", "diag_name",
                ("diag_list_id", *_DIAG_CHAPTERS, "sor_code", "sor_name", "used_std", "natstd_diag_name",
                 "clnc_diag_name"),
                MappingProxyType({
                    "natstd_diag_code": (_ICD10, "is not an ICD-10 diagnosis code like K35.8"),
                    "clnc_diag_code": (_ICD10, "is not an ICD-10 diagnosis code like K35.8"),
                }),
            ),
            ListSpec(
                "operations", ("1308",), "operations and procedures (ICD-9-CM-3)", "oprn_oprt_code", _ICD9CM3,
                "is not an ICD-9-CM-3 operation code like 47.0901", "oprn_oprt_name",
                ("oprn_std_list_id", "cpr", "cpr_code_scp", "cpr_name", "cgy_code", "cgy_name", "sor_code",
                 "sor_name", "dtls_code", "dtls_name", "used_std", "rtl_oprn_oprt_name",
                 "clnc_oprn_oprt_name"),
                MappingProxyType({
                    "rtl_oprn_oprt_code": (_ICD9CM3, "is not an ICD-9-CM-3 operation code like 47.0901"),
                    "clnc_oprn_oprt_code": (_ICD9CM3, "is not an ICD-9-CM-3 operation code like 47.0901"),
                }),
            ),
            ListSpec(
                "chronic_diseases", ("1309",), "outpatient chronic and special diseases", "opsp_dise_code",
                _OPSP, "is not a chronic or special disease code like M00500 (a letter and 5 digits)",
                "opsp_dise_name",
                ("opsp_dise_majcls_code", "opsp_dise_majcls_name", "opsp_dise_subd_clss_name", "dise_cont"),
                MappingProxyType({"admdvs": (AREA, "must be a 6-digit area code like 370200")}),
            ),
            ListSpec(
                "disease_groups", ("1310",), "diseases paid by disease group", "bydise_setl_list_code",
                _LOCAL, "must be 1-30 of A-Z, a-z, 0-9, '.', '_', '-'", "bydise_setl_dise_name",
                ("dise_setl_list_id", "qua_oprn_oprt_name", "dise_cont"), MappingProxyType(_OPRN_QUALIFIER),
            ),
            ListSpec(
                "day_surgery", ("1311",), "day-surgery diseases", "daysrg_dise_list_code", _LOCAL,
                "must be 1-30 of A-Z, a-z, 0-9, '.', '_', '-'", "daysrg_dise_name",
                ("daysrg_trt_list_id", "qua_oprn_oprt_name", "dise_cont"), MappingProxyType(_OPRN_QUALIFIER),
            ),
            ListSpec(
                "tumour_morphology", ("1313",), "tumour morphology (ICD-O-3)", "tmor_cell_type_code",
                _MORPHOLOGY, "is not an ICD-O-3 morphology code like M8140/3", "tmor_cell_type",
                ("tmor_mpy_id", "mpy_type_code", "mpy_type"),
            ),
            ListSpec(
                "tcm_diseases", ("1314",), "TCM diseases", "dise_type_code", _TCM,
                "is not a TCM disease code like A04.01.03", "dise_type_name",
                ("tcm_diag_id", "caty_cgy_code", "caty_cgy_name", "spcy_sys_taxa_code", "spcy_sys_taxa_name"),
            ),
            ListSpec(
                "tcm_syndromes", ("1315",), "TCM syndromes", "sds_type_code", _TCM,
                "is not a TCM syndrome code like B04.01.02.01", "sds_type_name",
                ("tcmsymp_id", "sds_cgy_code", "sds_cgy_name", "sds_attr_code", "sds_attr"),
            ),
            ListSpec(
                "matches", ("1316", "1317"), "hospital-to-national catalogue matches", "medins_list_codg",
                _MEDINS_CODE, "must be 1-150 of A-Z, a-z, 0-9, '.', '_', '-' (the hospital's own item code)",
                "medins_list_name", ("hilist_name",),
                MappingProxyType({
                    "hilist_code": (_ITEM_CODE, "must be 6-50 letters and digits (the insurance list code)"),
                }),
                MAX_MATCH_ROWS,
            ),
        )
    }
)  # fmt: skip

#: The fields only ``matches`` rows have: which hospital, the national code, the list type.
_MATCH_REQUIRED = ("fixmedins_code", "med_list_codg")


def _date(c: Checker, value: Any, path: str) -> dt.date | None:
    if not isinstance(value, str) or not _DATE.match(value):
        shown = repr(value) if isinstance(value, str) else kind(value)
        c.add(path, f"must be a date yyyy-MM-dd, found {shown}")
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        c.add(path, f"{value!r} is not a real date")
        return None


def _row(c: Checker, spec: ListSpec, raw: Any, path: str) -> tuple[tuple[str, ...], dict[str, str]] | None:
    """The row's key and its checked fields (``vali_flag`` filled in), or None when it has problems."""
    before = len(c.problems)
    required = {spec.code, spec.name} | (set(_MATCH_REQUIRED) if spec.section == "matches" else set())
    optional = set(spec.optional) | set(spec.codes) | set(_COMMON)
    if spec.section == "matches":
        optional.add("list_type")
    r = c.obj(raw, path, required, optional)
    if r is None:
        return None
    out: dict[str, str] = {}
    for name in sorted(r.keys() & (required | optional), key=str):
        value, at = r[name], join(path, name)
        if name == spec.code:
            checked = c.text(value, at, pattern=spec.code_pattern, hint=spec.code_hint)
        elif name in spec.codes:
            pattern, hint = spec.codes[name]
            checked = c.text(value, at, pattern=pattern, hint=hint)
        elif name == "fixmedins_code":
            hint = "is not an institution code like H37021100001"
            checked = c.text(value, at, pattern=_HOSPITAL, hint=hint)
        elif name == "med_list_codg":
            hint = "must be 6-50 letters and digits (the national code)"
            checked = c.text(value, at, pattern=_ITEM_CODE, hint=hint)
        elif name == "list_type":
            checked = c.text(value, at, choices=_LIST_TYPES)
        elif name == "vali_flag":
            checked = c.text(value, at, choices=("0", "1"))
        elif name in ("begndate", "enddate"):
            checked = value if _date(c, value, at) is not None else None
        else:
            checked = c.text(value, at, max_len=500 if name in ("memo", "dise_cont") else 200)
        if checked is not None:
            out[name] = checked
    if "begndate" in out and "enddate" in out and out["enddate"] < out["begndate"]:
        c.add(join(path, "enddate"), f"{out['enddate']} is before begndate {out['begndate']}")
    if len(c.problems) != before:
        return None
    out.setdefault("vali_flag", "1")
    if spec.section == "matches":
        key = (out["fixmedins_code"], out[spec.code], out.get("begndate", ""))
    else:
        key = (out[spec.code],)
    return key, out


def _key_text(spec: ListSpec, key: tuple[str, ...]) -> str:
    if spec.section == "matches":
        since = f" from {key[2]}" if key[2] else ""
        return f"hospital {key[0]}'s code {key[1]!r}{since}"
    return repr(key[0])


def check_lists(c: Checker, doc: Mapping[str, Any]) -> dict[str, tuple[dict[str, str], ...]]:
    """Check every list section ``doc`` carries; returns section → rows (in document order).

    Problems go to ``c`` with the row's path; a section with a problem returns no rows (the caller
    refuses the whole document then). A document without any list section returns ``{}``.
    """
    found: dict[str, tuple[dict[str, str], ...]] = {}
    for section, spec in LISTS.items():
        if section not in doc:
            continue
        before = len(c.problems)
        raw_rows = c.listing(doc[section], section, spec.max_rows)
        if isinstance(doc[section], list) and not doc[section]:
            c.add(section, "must hold at least one row (leave the section out when the bundle has none)")
        rows: list[dict[str, str]] = []
        seen: dict[tuple[str, ...], int] = {}
        for i, raw in enumerate(raw_rows):
            path = f"{section}[{i}]"
            checked = _row(c, spec, raw, path)
            if checked is None:
                continue
            key, row = checked
            if key in seen:
                c.add(join(path, spec.code), f"{_key_text(spec, key)} repeats {section}[{seen[key]}]")
                continue
            seen[key] = i
            rows.append(row)
        if len(c.problems) == before:
            found[section] = tuple(rows)
    return found
