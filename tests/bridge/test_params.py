"""GenerationParams: the one home of generation defaults and their checks."""
import pytest

from ciap_lib.bridge import DEFAULT_STEPS, GenerationParams, check_inputs


def test_defaults_and_the_samplers_own_steps():
    p = GenerationParams()
    assert (p.duration, p.steps, p.sampler, p.guidance_scale, p.seed, p.n_candidates) == (5.0, None, "dpmpp", 2.5, 0, 1)
    assert p.resolved_steps == DEFAULT_STEPS["dpmpp"] == 6
    assert GenerationParams(sampler="ddim").resolved_steps == 200
    assert GenerationParams(sampler="ddim", steps=20).resolved_steps == 20
    assert GenerationParams.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("field, value, words", [
    ("duration", 20.0, ["between 2.5 and 10.0", "20.0"]),
    ("steps", 0, ["integer >= 1", "sampler's default", "ddim 200"]),
    ("sampler", "euler", ["'euler'", "dpmpp", "unipc", "ddim"]),
    ("guidance_scale", -1.0, [">= 0", "-1.0"]),
    ("guidance_scale", float("nan"), ["finite"]),
    ("n_candidates", 0, [">= 1", "0"]),
    ("batch_size", 0, [">= 1"]),
    ("precision", "fp8", ["'fp8'", "bf16", "fp32"]),
])
def test_check_names_the_field_the_value_and_what_is_allowed(field, value, words):
    with pytest.raises(ValueError) as e:
        GenerationParams(**{field: value}).check(prefix="generation.")
    msg = str(e.value)
    assert msg.startswith(f"generation.{field}: ")
    for w in words:
        assert w in msg, msg


def test_every_problem_at_once_and_types_named():
    with pytest.raises(ValueError) as e:
        GenerationParams(duration=1.0, sampler="euler", n_candidates=0).check()
    assert len(str(e.value).splitlines()) == 3
    with pytest.raises(ValueError, match="generation.steps expects int or null, got 'many'"):
        GenerationParams.from_dict({"steps": "many"}, prefix="generation.")
    with pytest.raises(ValueError, match="unknown generation parameter"):
        GenerationParams.from_dict({"cfg_scale": 3.0})


def test_check_inputs_uses_the_same_rules():
    e = GenerationParams()  # any valid params
    with pytest.raises(ValueError, match="sampler: 'euler'"):
        check_inputs(sampler="euler", image_embeds=None, images=["x.png"], require_cond_stage=False)
    with pytest.raises(ValueError, match="n_candidates"):
        check_inputs(n_candidates=0, images=["x.png"], require_cond_stage=False)
    assert e.check() is e
