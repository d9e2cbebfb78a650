"""guidance: the plain negative/mix values (parsing, checks) and the mix formula, without a model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ciap_lib.bridge import GenerationParams
from ciap_lib.bridge.guidance import (
    MixTerm, check_embeds, check_files, mix_condition, parse_mix, spec_problems, uses_text,
)


@pytest.mark.parametrize("entry, term", [
    ("rain.wav:0.3", MixTerm("audio", "rain.wav", 0.3)),
    ("clips/a:b.wav:1", MixTerm("audio", "clips/a:b.wav", 1.0)),      # the weight is after the LAST colon
    ("text:rain:0.5", MixTerm("text", "rain", 0.5)),
    ("text:rain: heavy:0", MixTerm("text", "rain: heavy", 0.0)),
])
def test_parse_mix(entry, term):
    assert parse_mix(entry) == term
    assert parse_mix(str(term)) == term


@pytest.mark.parametrize("entry, words", [
    ("rain.wav", ["':<weight>'", "text:<text>:<weight>"]),
    ("rain.wav:much", ["':<weight>'"]),
    ("rain.wav:1.5", ["outside [0, 1]", "1.5"]),
    ("rain.wav:-0.1", ["outside [0, 1]"]),
    ("text::0.5", ["text is empty"]),
    (":0.5", ["':<weight>'"]),
])
def test_parse_mix_errors_say_what_is_accepted(entry, words):
    with pytest.raises(ValueError) as e:
        parse_mix(entry)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_params_check_names_negative_mix_and_device():
    with pytest.raises(ValueError) as e:
        GenerationParams(negative=["a.wav"], negative_text="speech", mix=["a.wav:0.7", "text:rain:0.6"],
                         device="gpu").check(prefix="generation.")
    lines = str(e.value).splitlines()
    assert any(line.startswith("generation.negative: ") and "not both" in line for line in lines)
    assert any(line.startswith("generation.mix: ") and "sum to 1.3" in line for line in lines)
    assert any(line.startswith("generation.device: ") and "cuda:N" in line for line in lines)
    with pytest.raises(ValueError, match=r"generation.mix: 'x.wav:2': weight 2 is outside \[0, 1\]"):
        GenerationParams(mix=["x.wav:2"]).check(prefix="generation.")
    with pytest.raises(ValueError, match="negative: must be a list of audio file paths"):
        GenerationParams(negative=[3]).check()
    ok = GenerationParams(negative=["a.wav", "b.wav"], mix=["text:rain:0.5", "c.wav:0.5"], device="cuda:1")
    assert ok.check() is ok and GenerationParams.from_dict(ok.to_dict()) == ok
    assert GenerationParams(negative_text="").check().negative_text == ""   # "" is the default vector itself
    assert spec_problems([], None, []) == []
    # a negative only steers at guidance_scale > 1: at 1 it would be ignored, below 1 followed
    for g in (1.0, 0.5, 0):
        with pytest.raises(ValueError, match=rf"guidance_scale: {g!r} with a negative: .* only at guidance_scale > 1"):
            GenerationParams(negative_text="speech", guidance_scale=g).check()
        assert GenerationParams(guidance_scale=g).check().guidance_scale == g  # without a negative: allowed


def test_uses_text_and_files(tmp_path):
    assert uses_text("speech", []) and uses_text(None, ["text:rain:0.2"])
    assert not uses_text("", ["a.wav:0.2"]) and not uses_text(None, [])
    (tmp_path / "a.wav").write_bytes(b"")
    check_files([tmp_path / "a.wav"], [f"{tmp_path / 'a.wav'}:0.5", "text:rain:0.5"])
    with pytest.raises(ValueError, match=r"negative: audio file '.*missing.wav' does not exist"):
        check_files([tmp_path / "missing.wav"], [])
    with pytest.raises(ValueError, match=r"mix: audio file '.*gone.wav' does not exist"):
        check_files([], [f"{tmp_path / 'gone.wav'}:0.5"])


def test_mix_condition_is_the_normalized_weighted_sum():
    g = torch.Generator().manual_seed(0)
    cond = F.normalize(torch.randn(3, 1, 512, generator=g), dim=-1)
    others = F.normalize(torch.randn(2, 512, generator=g), dim=-1)
    one = mix_condition(cond, others[:1], [0.3])
    torch.testing.assert_close(one, F.normalize(0.7 * cond + 0.3 * others[0], dim=-1))
    two = mix_condition(cond, others, [0.2, 0.5])
    torch.testing.assert_close(two, F.normalize(0.3 * cond + 0.2 * others[0] + 0.5 * others[1], dim=-1))
    torch.testing.assert_close(mix_condition(cond, others[:1], [0.0]), cond)
    assert torch.allclose(mix_condition(cond, others[:1], [1.0]), others[0].expand(3, 1, 512))


def test_check_embeds():
    e = F.normalize(torch.randn(2, 512), dim=-1)
    check_embeds(e[:1, None], e, [0.5, 0.5], n_images=4)
    check_embeds(torch.randn(4, 1, 512), None, None, n_images=4)
    with pytest.raises(ValueError, match="negative_embeds: 2 rows for 4 images"):
        check_embeds(e, None, None, n_images=4)
    with pytest.raises(ValueError, match="negative_embeds: expected"):
        check_embeds(torch.randn(1, 256), None, None)
    with pytest.raises(ValueError, match="together"):
        check_embeds(None, e, None)
    with pytest.raises(ValueError, match=r"mix_weights: each must be in \[0, 1\]"):
        check_embeds(None, e, [1.5, 0.0])
    with pytest.raises(ValueError, match="sum 1.2 > 1"):
        check_embeds(None, e, [0.6, 0.6])
    with pytest.raises(ValueError, match="1 weights for 2"):
        check_embeds(None, e, [0.5])


def test_check_inputs_takes_one_path_or_entry_alone(tmp_path):
    from ciap_lib.bridge import check_inputs

    e = F.normalize(torch.randn(1, 1, 512), dim=-1)
    with pytest.raises(ValueError, match=r"negative: audio file '.*one.wav' does not exist"):
        check_inputs(image_embeds=e, negative=tmp_path / "one.wav")
    with pytest.raises(ValueError, match="weight 2 is outside"):
        check_inputs(image_embeds=e, mix="text:rain:2")
    with pytest.raises(ValueError, match="no tokenizer folder at"):
        check_inputs(image_embeds=e, negative_text="speech", tokenizer_dir=tmp_path / "none")
    check_inputs(image_embeds=e, negative_text="speech")        # no tokenizer_dir: checked later, by generate()
