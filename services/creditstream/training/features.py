"""Engineered credit features as a scikit-learn transformer with a matching skl2onnx converter.

Both implementations compute in float32 with the same operations in the same order (explicit
left-to-right sums, IEEE division), so the ONNX graph reproduces the transformer bit for bit.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from creditstream.contract import BILL_FIELDS, FEATURES, PAYMENT_FIELDS, REPAYMENT_MONTHS

_LIMIT: Final = FEATURES.index("LIMIT_BAL")
_PAY: Final = tuple(FEATURES.index(name) for name in REPAYMENT_MONTHS)
_BILL: Final = tuple(FEATURES.index(name) for name in BILL_FIELDS)
_AMT: Final = tuple(FEATURES.index(name) for name in PAYMENT_FIELDS)

# NOTE: PAY_AMTk is the payment made in the month of BILL_AMT(k) towards the previous
# statement, BILL_AMT(k+1) (UCI: X18 = amount paid in September 2005, X13 = bill of August).
ENGINEERED_FEATURES: Final[tuple[str, ...]] = (
    *(f"UTILISATION{k}" for k in range(1, 7)),  # BILL_AMTk / LIMIT_BAL
    *(f"PAYMENT_RATIO{k}" for k in range(1, 6)),  # PAY_AMTk / (|BILL_AMT(k+1)| + 1)
    "MONTHS_DELAYED",  # count of PAY_x > 0
    "MAX_DELAY",  # max of PAY_x
    "TOTAL_UTILISATION",  # sum(BILL_AMT) / LIMIT_BAL
    "TOTAL_PAYMENT_RATIO",  # sum(PAY_AMT) / (|sum(BILL_AMT)| + 1)
)


def _sum(columns: list[np.ndarray]) -> np.ndarray:
    total = columns[0]
    for column in columns[1:]:
        total = total + column
    return total


class CreditFeatures(TransformerMixin, BaseEstimator):
    """Raw 23 fields → the raw fields (float32) plus, if `engineered`, ENGINEERED_FEATURES."""

    def __init__(self, engineered: bool = True) -> None:
        self.engineered = engineered

    def fit(self, X: Any, y: Any = None) -> CreditFeatures:
        """Stateless: only checks the width."""
        array = np.asarray(X)
        if array.ndim != 2 or array.shape[1] != len(FEATURES):
            raise ValueError(f"expected [n, {len(FEATURES)}] raw features, got {array.shape}")
        self.n_features_in_ = len(FEATURES)
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the output columns."""
        names = FEATURES + (ENGINEERED_FEATURES if self.engineered else ())
        return np.asarray(names, dtype=object)

    def transform(self, X: Any) -> np.ndarray:
        """Compute the features in float32."""
        x = np.asarray(X, dtype=np.float32)
        if not self.engineered:
            return x
        one = np.float32(1.0)
        col = [x[:, i : i + 1] for i in range(x.shape[1])]
        limit = col[_LIMIT]
        bills = [col[i] for i in _BILL]
        amounts = [col[i] for i in _AMT]
        pays = [col[i] for i in _PAY]
        utilisation = [bill / limit for bill in bills]
        ratios = [amounts[k] / (np.abs(bills[k + 1]) + one) for k in range(5)]
        delayed = _sum([(pay > 0).astype(np.float32) for pay in pays])
        max_delay = pays[0]
        for pay in pays[1:]:
            max_delay = np.maximum(max_delay, pay)
        total_bill = _sum(bills)
        total_paid = _sum(amounts)
        extra = [
            *utilisation,
            *ratios,
            delayed,
            max_delay,
            total_bill / limit,
            total_paid / (np.abs(total_bill) + one),
        ]
        return np.concatenate([x, *extra], axis=1).astype(np.float32, copy=False)


def _shape_calculator(operator: Any) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    width = len(operator.raw_operator.get_feature_names_out())
    batch = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([batch, width])


def _converter(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.algebra.onnx_ops import (
        OnnxAbs,
        OnnxAdd,
        OnnxCast,
        OnnxConcat,
        OnnxDiv,
        OnnxGather,
        OnnxGreater,
        OnnxIdentity,
        OnnxMax,
    )
    from skl2onnx.proto import onnx_proto

    model: CreditFeatures = operator.raw_operator
    opv = container.target_opset
    source = operator.inputs[0]
    output = operator.outputs[0].full_name
    if not model.engineered:
        OnnxIdentity(source, op_version=opv, output_names=[output]).add_to(scope, container)
        return

    one = np.array([1.0], dtype=np.float32)
    zero = np.array([0.0], dtype=np.float32)

    def column(index: int) -> Any:
        return OnnxGather(source, np.array([index], dtype=np.int64), axis=1, op_version=opv)

    def add_all(nodes: list[Any]) -> Any:
        total = nodes[0]
        for node in nodes[1:]:
            total = OnnxAdd(total, node, op_version=opv)
        return total

    limit = column(_LIMIT)
    bills = [column(i) for i in _BILL]
    amounts = [column(i) for i in _AMT]
    pays = [column(i) for i in _PAY]
    utilisation = [OnnxDiv(bill, limit, op_version=opv) for bill in bills]
    ratios = [
        OnnxDiv(
            amounts[k],
            OnnxAdd(OnnxAbs(bills[k + 1], op_version=opv), one, op_version=opv),
            op_version=opv,
        )
        for k in range(5)
    ]
    delayed = add_all(
        [
            OnnxCast(
                OnnxGreater(pay, zero, op_version=opv),
                to=onnx_proto.TensorProto.FLOAT,
                op_version=opv,
            )
            for pay in pays
        ]
    )
    max_delay = OnnxMax(*pays, op_version=opv)
    total_bill = add_all(bills)
    total_paid = add_all(amounts)
    extra = [
        *utilisation,
        *ratios,
        delayed,
        max_delay,
        OnnxDiv(total_bill, limit, op_version=opv),
        OnnxDiv(
            total_paid,
            OnnxAdd(OnnxAbs(total_bill, op_version=opv), one, op_version=opv),
            op_version=opv,
        ),
    ]
    OnnxConcat(source, *extra, axis=1, op_version=opv, output_names=[output]).add_to(
        scope, container
    )


def register_converter() -> None:
    """Teach skl2onnx to convert CreditFeatures (idempotent)."""
    from skl2onnx import update_registered_converter

    update_registered_converter(
        CreditFeatures, "CreditstreamCreditFeatures", _shape_calculator, _converter
    )
