"""The record contract: the 23 model features, their order, types and valid ranges (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

ID_FIELD: Final = "ID"
LABEL_FIELD: Final = "default.payment.next.month"
REPAYMENT_MONTHS: Final = ("PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6")
BILL_FIELDS: Final = tuple(f"BILL_AMT{i}" for i in range(1, 7))
PAYMENT_FIELDS: Final = tuple(f"PAY_AMT{i}" for i in range(1, 7))

# NOTE: the order is the ONNX input's column order and the data set's; never reorder.
FEATURES: Final[tuple[str, ...]] = (
    "LIMIT_BAL",
    "SEX",
    "EDUCATION",
    "MARRIAGE",
    "AGE",
    *REPAYMENT_MONTHS,
    *BILL_FIELDS,
    *PAYMENT_FIELDS,
)
N_FEATURES: Final = len(FEATURES)
ID_MAX_LENGTH: Final = 128
# Integer IDs fit a signed 64-bit column (and a JSON parser's integer range).
ID_MAX_INTEGER: Final = 2**63 - 1


@dataclass(frozen=True)
class FeatureSpec:
    """Valid values of one feature: inclusive bounds, and whether it must be a whole number."""

    name: str
    minimum: float
    maximum: float
    integer: bool
    description: str


def _spec(name: str, lo: float, hi: float, integer: bool, description: str) -> FeatureSpec:
    return FeatureSpec(name, lo, hi, integer, description)


# NOTE: ranges are the contract a lender's system can rely on, wider than the training data
# (e.g. EDUCATION 0, 5, 6 and MARRIAGE 0 occur in the data though undocumented by UCI).
_AMOUNT_LIMIT: Final = 100_000_000.0
FEATURE_SPECS: Final[dict[str, FeatureSpec]] = {
    s.name: s
    for s in (
        _spec("LIMIT_BAL", 1, _AMOUNT_LIMIT, False, "Credit limit (NT dollars), > 0."),
        _spec("SEX", 1, 2, True, "1 = male, 2 = female."),
        _spec(
            "EDUCATION",
            0,
            6,
            True,
            "1 graduate school, 2 university, 3 high school, 4 others; 0, 5, 6 unknown.",
        ),
        _spec("MARRIAGE", 0, 3, True, "1 married, 2 single, 3 others; 0 unknown."),
        _spec("AGE", 18, 120, True, "Age in years."),
        *(
            _spec(
                m,
                -2,
                9,
                True,
                "Repayment status: -2 no consumption, -1 paid duly, "
                "0 revolving, 1..9 months of delay.",
            )
            for m in REPAYMENT_MONTHS
        ),
        *(
            _spec(
                b,
                -_AMOUNT_LIMIT,
                _AMOUNT_LIMIT,
                False,
                "Bill statement amount (may be negative: credit balance).",
            )
            for b in BILL_FIELDS
        ),
        *(
            _spec(p, 0, _AMOUNT_LIMIT, False, "Amount of previous payment, >= 0.")
            for p in PAYMENT_FIELDS
        ),
    )
}
assert tuple(FEATURE_SPECS) == FEATURES


def record_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one request record; docs/contract is generated from it."""
    properties: dict[str, Any] = {
        ID_FIELD: {
            "description": "Caller's record id (the data set's ID); echoed in the prediction.",
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": ID_MAX_INTEGER},
                {"type": "string", "minLength": 1, "maxLength": ID_MAX_LENGTH},
            ],
        }
    }
    for spec in FEATURE_SPECS.values():
        properties[spec.name] = {
            "type": "integer" if spec.integer else "number",
            "minimum": spec.minimum if not spec.integer else int(spec.minimum),
            "maximum": spec.maximum if not spec.integer else int(spec.maximum),
            "description": spec.description,
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://creditstream.dev/schemas/record.schema.json",
        "title": "creditstream request record",
        "description": "One cardholder's 23 raw fields (UCI data set names) plus its ID.",
        "type": "object",
        "properties": properties,
        "required": [ID_FIELD, *FEATURES],
        "additionalProperties": False,
    }


def message_json_schema() -> dict[str, Any]:
    """JSON Schema of a request message body: one record or a non-empty array of records."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://creditstream.dev/schemas/request.schema.json",
        "title": "creditstream request message",
        "oneOf": [
            {"$ref": "record.schema.json"},
            {"type": "array", "minItems": 1, "items": {"$ref": "record.schema.json"}},
        ],
    }
