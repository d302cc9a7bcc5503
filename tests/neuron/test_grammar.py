"""The worker's grammar masks (`neuron.worker.grammar`) on the demo tokenizer."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from neuron.worker.grammar import GrammarError, Grammars, apply_masks, json_schema_grammar  # noqa: E402

VOCAB = 4096


@pytest.fixture(scope="module")
def grammars(demo_models) -> Grammars:
    return Grammars.from_snapshot(demo_models.plain_path, VOCAB, [4087, 4089])


def test_masks_touch_only_rows_with_a_grammar_and_agree_across_paths(grammars):
    grammar = json_schema_grammar({"enum": ["yes", "no"]})
    matchers = [grammars.matcher(grammar), None, grammars.matcher(grammar)]
    logits = torch.randn(3, VOCAB)
    numpy_path = logits.clone()
    apply_masks(numpy_path, matchers)
    torch_path = logits.double()  # not float32: the torch fallback (as on a GPU)
    apply_masks(torch_path, matchers)
    assert torch.equal(numpy_path[1], logits[1])
    assert torch.equal(numpy_path.isinf(), torch_path.isinf())
    allowed = (~numpy_path[0].isinf()).sum()
    assert 0 < allowed < VOCAB // 2
    assert grammars.cached == 1


def test_greedy_under_the_mask_writes_a_valid_document(grammars, demo_models):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    matcher = grammars.matcher(json_schema_grammar(schema))
    generator = torch.Generator().manual_seed(0)
    tokens = []
    for _ in range(100):
        logits = torch.randn(1, VOCAB, generator=generator)
        apply_masks(logits, [matcher])
        token = int(logits.argmax())
        if token in (4087, 4089):
            break
        assert matcher.consume_token(token)
        tokens.append(token)
    text = grammars.tokenizer.decode_str(tokens)
    assert isinstance(json.loads(text)["ok"], bool)


def test_a_missing_tokenizer_is_a_bad_request(tmp_path):
    with pytest.raises(GrammarError, match=r"tokenizer\.json"):
        Grammars.from_snapshot(tmp_path, VOCAB, [0])
