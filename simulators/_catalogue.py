"""A small catalogue the HIS simulator draws from: drugs, service items, consumables, diagnoses.

The codes look like the national ones (drug codes ``X``/``Z`` + ATC-style stem, 15-digit
service item codes, ``C`` consumable codes, ICD-10 with the national extension) so that an
agent's catalogue and rule checks see plausible input. Prices are ordinary list prices,
some per pack with two decimals and some per unit with four (split-pack dispensing), so
line totals exercise half-up rounding to the fen. Nothing here is authoritative.
"""

from __future__ import annotations

from dataclasses import dataclass

WESTERN_DRUG = "101"
CHINESE_PATENT_DRUG = "102"
SERVICE_ITEM = "201"
CONSUMABLE = "301"


@dataclass(frozen=True, slots=True)
class Item:
    """One catalogue entry; drugs also say how a pack is taken, so ``days`` can be derived."""

    code: str
    name: str
    list_type: str
    pric: str
    chrgitm_lv: str = "A"
    pack_units: int = 0  # drugs: units (tablets, doses) in one priced unit
    units_per_day: int = 0  # drugs: units taken per day
    dosage: str = ""  # drugs: the prescription text the HIS prints


def _drug(code: str, name: str, pric: str, pack: int, per_day: int, dosage: str, lv: str = "A") -> Item:
    return Item(code, name, WESTERN_DRUG, pric, lv, pack, per_day, dosage)


def _tcm(code: str, name: str, pric: str, pack: int, per_day: int, dosage: str, lv: str = "B") -> Item:
    return Item(code, name, CHINESE_PATENT_DRUG, pric, lv, pack, per_day, dosage)


def _svc(code: str, name: str, pric: str, lv: str = "A") -> Item:
    return Item(code, name, SERVICE_ITEM, pric, lv)


def _mcs(code: str, name: str, pric: str, lv: str = "A") -> Item:
    return Item(code, name, CONSUMABLE, pric, lv)


DRUGS: dict[str, Item] = {
    d.code: d
    for d in (
        _drug("XC08CAA077A001010100001", "amlodipine besylate tablets 5mg x 28", "19.60", 28, 1, "5mg qd"),
        _drug(
            "XC08CAN062A012010100455",
            "nifedipine extended-release tablets 30mg x 7",
            "23.45",
            7,
            1,
            "30mg qd",
        ),
        _drug("XC09CAV012A001010102315", "valsartan capsules 80mg x 7", "8.9600", 7, 1, "80mg qd"),
        _drug(
            "XC07ABM086A012010104470",
            "metoprolol succinate ER tablets 47.5mg x 7",
            "3.1250",
            7,
            1,
            "47.5mg qd",
        ),
        _drug(
            "XA10BAE056A001010101953", "metformin hydrochloride tablets 0.5g x 48", "12.35", 48, 3, "0.5g tid"
        ),
        _drug(
            "XA10BBG033A012010100987",
            "gliclazide modified-release tablets 30mg x 30",
            "31.80",
            30,
            1,
            "30mg qd",
        ),
        _drug(
            "XA10BFA022A001010102861", "acarbose tablets 50mg (per tablet)", "0.4567", 1, 3, "50mg tid", "B"
        ),
        _drug(
            "XA10AEG067B002010183412",
            "insulin glargine injection 3ml:300IU",
            "72.80",
            30,
            1,
            "10IU qn sc",
            "B",
        ),
        _drug("XC10AAA089A001010102178", "atorvastatin calcium tablets 20mg x 7", "5.23", 7, 1, "20mg qn"),
        _drug(
            "XC10AAR124A001010100786",
            "rosuvastatin calcium tablets 10mg x 28",
            "17.92",
            28,
            1,
            "10mg qn",
            "B",
        ),
        _drug(
            "XB01ACA056A012010102653", "aspirin enteric-coated tablets 100mg x 30", "15.80", 30, 1, "100mg qd"
        ),
        _drug("XB01ACL057A001010101245", "clopidogrel bisulfate tablets 75mg x 7", "3.8700", 7, 1, "75mg qd"),
        _drug(
            "XC01DAS019A012010102011",
            "isosorbide mononitrate ER tablets 40mg x 24",
            "26.40",
            24,
            1,
            "40mg qd",
            "B",
        ),
        _drug(
            "XA02BCA211A010010102134",
            "omeprazole enteric-coated capsules 20mg x 14",
            "6.90",
            14,
            2,
            "20mg bid",
        ),
        _drug(
            "XA02BCP072B001010101540",
            "pantoprazole sodium for injection 40mg",
            "9.8600",
            1,
            1,
            "40mg qd ivgtt",
            "B",
        ),
        _drug("XA03FAD076A001010101132", "domperidone tablets 10mg (per tablet)", "0.3120", 1, 3, "10mg tid"),
        _drug("XJ01CAA040E001010101689", "amoxicillin capsules 0.25g x 24", "8.56", 24, 6, "0.5g tid"),
        _drug(
            "XJ01CRA085A001010103371",
            "amoxicillin and clavulanate potassium tablets 0.375g x 12",
            "18.25",
            12,
            3,
            "0.375g tid",
        ),
        _drug("XJ01DCF064A001010100553", "cefuroxime axetil tablets 0.25g x 12", "21.36", 12, 2, "0.25g bid"),
        _drug(
            "XJ01DDT013B002010100208", "ceftriaxone sodium for injection 1g", "2.3450", 1, 2, "2g qd ivgtt"
        ),
        _drug("XJ01FAA051B002010101744", "azithromycin for injection 0.5g", "11.5600", 1, 1, "0.5g qd ivgtt"),
        _drug("XN02BEA004A001010101478", "paracetamol tablets 0.5g x 12", "4.20", 12, 3, "0.5g tid prn"),
        _drug("XM01AHS004E001010105527", "celecoxib capsules 0.2g x 6", "13.17", 6, 1, "0.2g qd", "B"),
        _drug(
            "XM01AEB034A001010101067",
            "ibuprofen sustained-release capsules 0.3g x 20",
            "7.85",
            20,
            2,
            "0.3g bid",
        ),
        _drug(
            "XR05CBA149B002010102391",
            "ambroxol hydrochloride injection 2ml:15mg",
            "3.1250",
            1,
            4,
            "30mg bid iv",
        ),
        _drug(
            "XR05CBA149A001010102390", "ambroxol hydrochloride tablets 30mg x 20", "6.30", 20, 3, "30mg tid"
        ),
        _drug(
            "XN07XXD017E001010100312",
            "butylphthalide soft capsules 0.1g x 24",
            "98.60",
            24,
            6,
            "0.2g tid",
            "B",
        ),
        _drug(
            "XB05BBS011B002010100076",
            "sodium chloride injection 0.9% 250ml",
            "4.5000",
            1,
            2,
            "250ml qd ivgtt",
        ),
        _drug("XB05BAG013B002010100114", "glucose injection 5% 250ml", "4.8000", 1, 1, "250ml qd ivgtt"),
        _tcm("ZA04BAL0093010100764", "Lianhua Qingwen capsules 0.35g x 24", "14.80", 24, 12, "1.4g tid"),
        _tcm("ZA06AAS0224010101120", "compound licorice tablets x 100", "9.50", 100, 9, "3 tablets tid"),
        _tcm("ZA12BAW0261010100238", "Weisu granules 5g x 6", "19.20", 6, 3, "5g tid"),
        _tcm(
            "ZA12GAD0402010101553", "Danshen dripping pills 27mg x 180", "30.40", 180, 30, "10 pills tid", "B"
        ),
    )
}

SERVICES: dict[str, Item] = {
    s.code: s
    for s in (
        _svc("001102000010000", "general outpatient consultation", "12.00"),
        _svc("001102000030000", "specialist outpatient consultation", "25.00"),
        _svc("001103000010000", "inpatient consultation (per day)", "15.00"),
        _svc("001109000010000", "ward bed fee, three-bed room (per day)", "45.00"),
        _svc("001201000030000", "level II nursing (per day)", "18.00"),
        _svc("001204000060000", "intravenous infusion", "8.50"),
        _svc("001204000010000", "intramuscular injection", "3.00"),
        _svc("002501010150000", "complete blood count (blood routine)", "20.00"),
        _svc("002501020350000", "urinalysis", "10.00"),
        _svc("002503010010000", "blood glucose", "8.00"),
        _svc("002503020010000", "total cholesterol", "6.00"),
        _svc("002503020030000", "triglycerides", "6.00"),
        _svc("002503030030000", "HbA1c", "45.00"),
        _svc("002503010150000", "liver function panel", "48.50"),
        _svc("002503050010000", "renal function panel", "32.00"),
        _svc("002504030020000", "C-reactive protein", "25.00"),
        _svc("003107010010000", "electrocardiogram, 12 lead", "22.00"),
        _svc("002203010010000", "abdominal ultrasound", "80.00"),
        _svc("002103000010000", "CT plain scan, chest", "210.00"),
        _svc("002103000020000", "CT plain scan, head", "180.00"),
        _svc("002102000010000", "chest X-ray (DR)", "65.00"),
        _svc("003301000030000", "general anaesthesia", "860.00"),
        _svc("003310030010000", "appendectomy", "1250.00"),
        _svc("003110000010000", "nebulised inhalation", "6.00"),
        _svc("009900000010000", "ward air conditioning surcharge (per day)", "5.00", "C"),
    )
}

CONSUMABLES: dict[str, Item] = {
    c.code: c
    for c in (
        _mcs("C1401010100000004570", "disposable syringe 5ml", "0.4800"),
        _mcs("C1401020100000012210", "disposable infusion set with needle", "3.2000"),
        _mcs("C1402010200000003416", "IV cannula 22G", "12.50"),
        _mcs("C1403010100000000982", "medical gauze 8cm x 10cm", "0.9500"),
        _mcs("C0207010200000007733", "absorbable surgical suture 3-0", "68.00", "B"),
        _mcs("C1405020100000002104", "disposable vacuum blood collection tube", "0.7500"),
        _mcs("C1602010100000001136", "medical cold compress", "15.00", "C"),
    )
}

ALL_ITEMS: dict[str, Item] = {**DRUGS, **SERVICES, **CONSUMABLES}


@dataclass(frozen=True, slots=True)
class Condition:
    """A diagnosis with what is usually prescribed, tested and where it is seen."""

    dise_codg: str
    dise_name: str
    dept_codg: str
    drugs: tuple[str, ...]
    tests: tuple[str, ...]
    chronic: bool = False
    inpatient_extras: tuple[str, ...] = ()  # services only an admission for this condition uses


CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "I10.x00",
        "essential hypertension",
        "A03.04",
        (
            "XC08CAA077A001010100001",
            "XC08CAN062A012010100455",
            "XC09CAV012A001010102315",
            "XC07ABM086A012010104470",
        ),
        ("003107010010000", "002503050010000"),
        chronic=True,
    ),
    Condition(
        "E11.900",
        "type 2 diabetes mellitus",
        "A03.07",
        (
            "XA10BAE056A001010101953",
            "XA10BBG033A012010100987",
            "XA10BFA022A001010102861",
            "XA10AEG067B002010183412",
        ),
        ("002503010010000", "002503030030000", "002501020350000"),
        chronic=True,
    ),
    Condition(
        "E78.500",
        "hyperlipidaemia",
        "A03.04",
        ("XC10AAA089A001010102178", "XC10AAR124A001010100786"),
        ("002503020010000", "002503020030000", "002503010150000"),
        chronic=True,
    ),
    Condition(
        "I25.103",
        "coronary heart disease",
        "A03.04",
        (
            "XB01ACA056A012010102653",
            "XC10AAA089A001010102178",
            "XB01ACL057A001010101245",
            "XC01DAS019A012010102011",
            "ZA12GAD0402010101553",
        ),
        ("003107010010000", "002503020010000"),
        chronic=True,
    ),
    Condition(
        "J06.900",
        "acute upper respiratory tract infection",
        "A03.01",
        (
            "XN02BEA004A001010101478",
            "ZA04BAL0093010100764",
            "ZA06AAS0224010101120",
            "XJ01CAA040E001010101689",
        ),
        ("002501010150000", "002504030020000"),
    ),
    Condition(
        "J20.900",
        "acute bronchitis",
        "A03.01",
        (
            "XJ01CRA085A001010103371",
            "XJ01DCF064A001010100553",
            "XR05CBA149A001010102390",
            "ZA06AAS0224010101120",
        ),
        ("002501010150000", "002504030020000", "002102000010000"),
    ),
    Condition(
        "K29.700",
        "gastritis",
        "A03.03",
        ("XA02BCA211A010010102134", "XA03FAD076A001010101132", "ZA12BAW0261010100238"),
        ("002501010150000", "002203010010000"),
    ),
    Condition(
        "M54.500",
        "low back pain",
        "A04.06",
        ("XM01AHS004E001010105527", "XM01AEB034A001010101067"),
        ("002102000010000",),
    ),
    Condition(
        "J18.900",
        "pneumonia",
        "A03.01",
        (
            "XJ01DDT013B002010100208",
            "XJ01FAA051B002010101744",
            "XR05CBA149B002010102391",
            "XB05BBS011B002010100076",
        ),
        ("002501010150000", "002504030020000", "002103000010000", "002503010150000"),
        inpatient_extras=("003110000010000",),
    ),
    Condition(
        "I63.900",
        "cerebral infarction",
        "A03.05",
        (
            "XB01ACA056A012010102653",
            "XC10AAA089A001010102178",
            "XN07XXD017E001010100312",
            "XB05BBS011B002010100076",
        ),
        ("002103000020000", "002503020010000", "002503010010000", "003107010010000"),
    ),
    Condition(
        "K35.800",
        "acute appendicitis",
        "A04.01",
        (
            "XJ01DCF064A001010100553",
            "XA02BCP072B001010101540",
            "XB05BAG013B002010100114",
            "XB05BBS011B002010100076",
        ),
        ("002501010150000", "002504030020000", "002203010010000"),
        inpatient_extras=("003301000030000", "003310030010000"),
    ),
)

OUTPATIENT_CONDITIONS = tuple(c for c in CONDITIONS if c.dise_codg not in {"J18.900", "I63.900", "K35.800"})
CHRONIC_CONDITIONS = tuple(c for c in CONDITIONS if c.chronic)
INPATIENT_CONDITIONS = tuple(
    c for c in CONDITIONS if c.dise_codg in {"J18.900", "I63.900", "K35.800", "E11.900", "I25.103"}
)

# Pooling areas of insured persons: mostly the hospital's own, some elsewhere in the
# province, a few off-site (异地就医) from other provinces.
PROVINCE_AREAS = ("370202", "370203", "370211", "370212", "370213", "370214", "370281", "370102", "370602")
OFFSITE_AREAS = ("110105", "310115", "320106", "440305", "510107")
