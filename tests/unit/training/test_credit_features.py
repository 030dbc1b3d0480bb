"""CreditFeatures: hand-checked values and bit-exact parity with its ONNX converter."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

from creditstream.contract import FEATURE_SPECS, FEATURES
from creditstream.training.features import ENGINEERED_FEATURES, CreditFeatures, register_converter

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def contract_rows(rows: int, seed: int) -> np.ndarray:
    """Random rows inside the contract ranges, with zero and negative bills mixed in."""
    rng = np.random.default_rng(seed)
    columns = []
    for name in FEATURES:
        spec = FEATURE_SPECS[name]
        low, high = max(spec.minimum, -2e6), min(spec.maximum, 2e6)
        columns.append(rng.integers(int(low), int(high) + 1, rows).astype(np.float64))
    X = np.stack(columns, axis=1)
    X[::5, 11:17] = 0.0
    X[1::7, 0] = 1.0  # NOTE: the smallest credit limit the contract allows
    X[2::9, 11:17] *= -1
    X[3::11, 17:23] = 0.0
    return X.astype(np.float32)


def onnx_transform(model: CreditFeatures, X: np.ndarray) -> np.ndarray:
    register_converter()
    graph = convert_sklearn(
        model,
        initial_types=[("features", FloatTensorType([None, 23]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"features": X})[0])


@pytest.mark.parametrize(
    ("engineered", "width"),
    [
        pytest.param(True, 23 + len(ENGINEERED_FEATURES), id="engineered"),
        pytest.param(False, 23, id="raw"),
    ],
)
@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in (0, 1)])
def test_onnx_graph_is_bit_exact(engineered: bool, width: int, seed: int) -> None:
    X = contract_rows(4000, seed)
    model = CreditFeatures(engineered).fit(X)
    expected = model.transform(X)
    actual = onnx_transform(model, X)
    assert expected.shape == actual.shape == (4000, width)
    assert len(model.get_feature_names_out()) == width
    assert np.isfinite(actual).all()
    np.testing.assert_array_equal(actual, expected)


def test_hand_computed_row() -> None:
    row = dict.fromkeys(FEATURES, 0.0)
    row.update(
        LIMIT_BAL=1000.0,
        SEX=2,
        EDUCATION=2,
        MARRIAGE=1,
        AGE=30,
        PAY_0=2,
        PAY_2=1,
        PAY_3=0,
        PAY_4=-1,
        PAY_5=3,
        PAY_6=-2,
        BILL_AMT1=500.0,
        BILL_AMT2=-99.0,
        BILL_AMT3=200.0,
        PAY_AMT1=50.0,
        PAY_AMT2=100.0,
    )
    X = np.array([[row[name] for name in FEATURES]], dtype=np.float32)
    out = dict(
        zip(
            CreditFeatures().get_feature_names_out(),
            CreditFeatures().fit(X).transform(X)[0],
            strict=True,
        )
    )
    assert out["UTILISATION1"] == pytest.approx(0.5)
    assert out["UTILISATION2"] == pytest.approx(-0.099)
    assert out["PAYMENT_RATIO1"] == pytest.approx(50 / 100)  # 50 / (|-99| + 1)
    assert out["PAYMENT_RATIO2"] == pytest.approx(100 / 201)
    assert out["PAYMENT_RATIO3"] == 0.0  # NOTE: no bill, no payment: 0 / 1, not NaN
    assert out["MONTHS_DELAYED"] == 3
    assert out["MAX_DELAY"] == 3
    assert out["TOTAL_UTILISATION"] == pytest.approx(0.601)
    assert out["TOTAL_PAYMENT_RATIO"] == pytest.approx(150 / 602)


def test_rejects_the_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"expected \[n, 23\] raw features"):
        CreditFeatures().fit(np.zeros((3, 22)))
