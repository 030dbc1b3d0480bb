"""The published contract (JSON Schema + AsyncAPI) matches the code."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from creditstream.codec import RejectReason, ValidRecord, validate_record
from creditstream.contract import record_json_schema
from creditstream.contract_docs import CONTRACT_DIR, generated_documents, render
from creditstream.topology import REASON_HEADER

pytestmark = pytest.mark.unit
ASYNCAPI = CONTRACT_DIR / "asyncapi.yaml"


@pytest.mark.parametrize("name", sorted(generated_documents()))
def test_generated_schema_files_are_up_to_date(name: str) -> None:
    path: Path = CONTRACT_DIR / name
    assert path.read_text(encoding="utf-8") == render(generated_documents()[name]), (
        "run `make contract-docs`"
    )


def test_asyncapi_examples_pass_the_codec_and_the_schema() -> None:
    document = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    examples = document["components"]["messages"]["scoreRequest"]["examples"]
    validator = jsonschema.Draft202012Validator(record_json_schema())
    for example in examples:
        assert isinstance(validate_record(example["payload"]), ValidRecord)
        validator.validate(example["payload"])


def test_asyncapi_lists_every_reject_reason() -> None:
    document = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    headers = document["components"]["messages"]["deadLetter"]["headers"]["properties"]
    documented = set(headers[REASON_HEADER]["enum"])
    in_code = {value for key, value in vars(RejectReason).items() if key.isupper()}
    assert documented == in_code
