from datetime import timedelta
from typing import Any

import pytest

from magicpixels.core import idempotency
from magicpixels.core.errors import Aborted, AlreadyExists, InvalidArgument
from magicpixels.jobs.v1 import jobs_pb2
from magicpixels.services.jobs import domain
from magicpixels.services.jobs.domain import HoldStatus, State
from tests.jobs.conftest import claim_of, text_to_image


def refusal(spec: jobs_pb2.JobSpec) -> tuple[str, str | None]:
    with pytest.raises(InvalidArgument) as caught:
        domain.resolve_spec(spec)
    return caught.value.reason, caught.value.param


def test_text_to_image_defaults_are_resolved() -> None:
    resolved = domain.resolve_spec(text_to_image())

    assert (resolved.width, resolved.height) == (1024, 1024)
    assert resolved.steps == 20
    assert resolved.guidance_scale == 7.5
    assert resolved.output_format == "png"
    assert 0 <= resolved.seed <= domain.MAX_SEED
    assert resolved.HasField("seed")
    assert not resolved.HasField("deadline_seconds")


def test_given_values_are_kept() -> None:
    spec = text_to_image(
        width=512, height=768, seed=0, steps=1, guidance_scale=0, output_format="webp"
    )

    resolved = domain.resolve_spec(spec)

    assert (resolved.width, resolved.height, resolved.seed, resolved.steps) == (512, 768, 0, 1)
    assert (resolved.guidance_scale, resolved.output_format) == (0, "webp")


def test_the_request_itself_is_left_as_it_was() -> None:
    spec = text_to_image()

    domain.resolve_spec(spec)

    assert not spec.HasField("seed")
    assert not spec.HasField("width")
    assert spec.output_format == ""


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": "p" * 4000},
        {"negative_prompt": "n" * 4000},
        {"width": 64, "height": 2048},
        {"seed": domain.MAX_SEED},
        {"steps": 100},
        {"guidance_scale": 30.0},
        {"output_format": "jpeg"},
        {"metadata": {f"k{i}": "v" * 500 for i in range(16)}},
        {"metadata": {"k" * 40: ""}},
    ],
)
def test_limits_are_accepted(fields: dict[str, Any]) -> None:
    spec = text_to_image(**{"prompt": "a prompt", **fields})

    domain.resolve_spec(spec)


@pytest.mark.parametrize(
    ("fields", "reason", "param"),
    [
        ({"prompt": ""}, "PARAMETER_MISSING", "prompt"),
        ({"prompt": "p" * 4001}, "PARAMETER_INVALID", "prompt"),
        ({"negative_prompt": "n" * 4001}, "PARAMETER_INVALID", "negative_prompt"),
        ({"width": 1020}, "PARAMETER_INVALID", "width"),
        ({"width": 56}, "PARAMETER_INVALID", "width"),
        ({"height": 2056}, "PARAMETER_INVALID", "height"),
        ({"height": 0}, "PARAMETER_INVALID", "height"),
        ({"seed": -1}, "PARAMETER_INVALID", "seed"),
        ({"seed": domain.MAX_SEED + 1}, "PARAMETER_INVALID", "seed"),
        ({"steps": 0}, "PARAMETER_INVALID", "steps"),
        ({"steps": 101}, "PARAMETER_INVALID", "steps"),
        ({"guidance_scale": -0.1}, "PARAMETER_INVALID", "guidance_scale"),
        ({"guidance_scale": 30.5}, "PARAMETER_INVALID", "guidance_scale"),
        ({"guidance_scale": float("nan")}, "PARAMETER_INVALID", "guidance_scale"),
        ({"output_format": "gif"}, "PARAMETER_INVALID", "output_format"),
        ({"output_format": "mp4"}, "PARAMETER_INVALID", "output_format"),
        ({"deadline_seconds": 0}, "PARAMETER_INVALID", "deadline_seconds"),
        ({"deadline_seconds": 86401}, "PARAMETER_INVALID", "deadline_seconds"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "PARAMETER_INVALID", "metadata"),
        ({"metadata": {"k" * 41: "v"}}, "PARAMETER_INVALID", "metadata"),
        ({"metadata": {"": "v"}}, "PARAMETER_INVALID", "metadata"),
        ({"metadata": {"k": "v" * 501}}, "PARAMETER_INVALID", "metadata"),
        ({"strength": 0.5}, "PARAMETER_INVALID", "strength"),
        ({"input_asset_id": "asset_x"}, "PARAMETER_INVALID", "input_asset_id"),
        ({"duration_seconds": 4}, "PARAMETER_INVALID", "duration_seconds"),
        ({"fps": 24}, "PARAMETER_INVALID", "fps"),
    ],
)
def test_each_rule_refuses_with_its_param(fields: dict[str, Any], reason: str, param: str) -> None:
    spec = text_to_image(**{"prompt": "a prompt", **fields})

    assert refusal(spec) == (reason, param)


@pytest.mark.parametrize("seconds", [1, 600, 86400])
def test_a_deadline_within_its_limits_is_kept(seconds: int) -> None:
    resolved = domain.resolve_spec(text_to_image(deadline_seconds=seconds))

    assert resolved.deadline_seconds == seconds


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 100}, "width must be a multiple of 8 between 64 and 2048"),
        ({"seed": domain.MAX_SEED + 1}, "seed must be between 0 and 4294967295"),
        ({"guidance_scale": 31.0}, "guidance_scale must be between 0 and 30"),
    ],
)
def test_the_message_states_the_rule(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.resolve_spec(text_to_image(**fields))

    assert caught.value.message == message


def test_fractional_bounds_are_written_as_fractions() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.Number("strength", 0.25, 0.5).apply(text_to_image(strength=0.75))

    assert caught.value.message == "strength must be between 0.25 and 0.5"


def test_unspecified_and_unknown_modes_are_refused() -> None:
    assert refusal(jobs_pb2.JobSpec(prompt="p")) == ("MODE_UNKNOWN", "mode")
    unknown = jobs_pb2.JobSpec(mode=99, prompt="p")  # type: ignore[arg-type]
    assert refusal(unknown) == ("MODE_UNKNOWN", "mode")


IMAGE = domain.InputAsset("image", width=1001, height=2999)
AUDIO = domain.InputAsset("audio", duration_seconds=12.5)


def spec_of(mode: int, **fields: Any) -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(mode=mode, **fields)  # type: ignore[arg-type]


def test_image_to_image_takes_its_size_from_the_input_fitted_to_the_limits() -> None:
    spec = spec_of(jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE, prompt="oil paint", input_asset_id="asset_1")

    resolved = domain.resolve_spec(spec, {"input_asset_id": IMAGE})

    assert (resolved.width, resolved.height) == (680, 2048)
    assert resolved.strength == pytest.approx(0.6)
    assert resolved.output_format == "png"


def test_text_to_audio_defaults_to_ten_seconds_of_wav() -> None:
    resolved = domain.resolve_spec(spec_of(jobs_pb2.JOB_MODE_TEXT_TO_AUDIO, prompt="rain"))

    assert (resolved.duration_seconds, resolved.output_format) == (10, "wav")
    assert not resolved.HasField("width")


@pytest.mark.parametrize(
    ("inputs", "fields", "duration"),
    [
        ({"input_asset_id": IMAGE}, {}, 4),
        ({"input_asset_id": IMAGE, "audio_asset_id": AUDIO}, {"audio_asset_id": "a"}, 12.5),
        (
            {"input_asset_id": IMAGE, "audio_asset_id": domain.InputAsset("audio", None, None, 95)},
            {"audio_asset_id": "a"},
            30,
        ),
        (
            {"input_asset_id": IMAGE, "audio_asset_id": AUDIO},
            {"audio_asset_id": "a", "duration_seconds": 2},
            2,
        ),
    ],
)
def test_a_video_lasts_as_its_soundtrack_unless_told(
    inputs: domain.Inputs, fields: dict[str, Any], duration: float
) -> None:
    spec = spec_of(jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO, input_asset_id="i", **fields)

    resolved = domain.resolve_spec(spec, inputs)

    assert resolved.duration_seconds == duration
    assert (resolved.fps, resolved.output_format) == (24, "mp4")


def test_an_input_of_the_wrong_kind_is_refused() -> None:
    spec = spec_of(jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO, input_asset_id="i", audio_asset_id="a")

    with pytest.raises(InvalidArgument) as caught:
        domain.resolve_spec(spec, {"input_asset_id": IMAGE, "audio_asset_id": IMAGE})

    assert (caught.value.reason, caught.value.param) == ("ASSET_KIND_MISMATCH", "audio_asset_id")


@pytest.mark.parametrize(
    ("mode", "fields", "param"),
    [
        (jobs_pb2.JOB_MODE_IMAGE_TO_IMAGE, {"prompt": "p"}, "input_asset_id"),
        (
            jobs_pb2.JOB_MODE_TEXT_TO_AUDIO,
            {"prompt": "p", "duration_seconds": 301},
            "duration_seconds",
        ),
        (jobs_pb2.JOB_MODE_TEXT_TO_AUDIO, {"prompt": "p", "output_format": "png"}, "output_format"),
        (jobs_pb2.JOB_MODE_TEXT_TO_AUDIO, {"prompt": "p", "width": 512}, "width"),
        (jobs_pb2.JOB_MODE_TEXT_TO_IMAGE, {"prompt": "p", "strength": 0.5}, "strength"),
        (jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO, {"input_asset_id": "i", "fps": 61}, "fps"),
        (
            jobs_pb2.JOB_MODE_IMAGE_TO_VIDEO,
            {"input_asset_id": "i", "duration_seconds": 31},
            "duration_seconds",
        ),
    ],
)
def test_each_mode_refuses_what_it_does_not_take(
    mode: int, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.resolve_spec(spec_of(mode, **fields), {"input_asset_id": IMAGE})

    assert caught.value.param == param


@pytest.mark.parametrize(
    ("size", "fitted"),
    [
        ((1024, 1024), (1024, 1024)),
        ((1001, 2999), (680, 2048)),
        ((4096, 1024), (2048, 512)),
        ((6400, 6250), (2048, 2000)),
        ((100, 60), (104, 64)),
        ((40, 40), (64, 64)),
        ((10000, 10), (2048, 64)),  # past 32:1: as much of the shape as the limits allow
    ],
)
def test_an_input_size_is_fitted_to_the_limits_keeping_its_shape(
    size: tuple[int, int], fitted: tuple[int, int]
) -> None:
    assert domain.fitted_size(*size) == fitted


def test_state_machine() -> None:
    assert domain.sources_of(State.QUEUED) == {State.PENDING, State.RUNNING}
    assert domain.sources_of(State.RUNNING) == {State.QUEUED}
    assert domain.sources_of(State.CANCELED) == {State.QUEUED, State.RUNNING}
    assert domain.sources_of(State.COMPLETED) == {State.RUNNING}
    assert domain.sources_of(State.FAILED) == {State.PENDING, State.RUNNING}
    assert domain.sources_of(State.PENDING) == set()
    assert all(not domain.is_terminal(state) for state in ("pending", "queued", "running"))
    assert all(domain.is_terminal(state) for state in ("completed", "failed", "canceled"))


def test_only_a_completed_job_pays() -> None:
    assert domain.hold_resolution(State.COMPLETED) == domain.HoldStatus.CAPTURED
    assert domain.hold_resolution(State.FAILED) == domain.HoldStatus.RELEASED
    assert domain.hold_resolution(State.CANCELED) == domain.HoldStatus.RELEASED


def test_retries_back_off_exponentially_up_to_a_minute() -> None:
    assert [domain.retry_delay(n).total_seconds() for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert domain.retry_delay(30) == timedelta(minutes=1)
    assert domain.may_retry(2, 3)
    assert not domain.may_retry(3, 3)


def test_lease_modes() -> None:
    assert domain.lease_modes([jobs_pb2.JOB_MODE_TEXT_TO_IMAGE]) == ["text_to_image"]
    with pytest.raises(InvalidArgument) as missing:
        domain.lease_modes([])
    with pytest.raises(InvalidArgument) as unknown:
        domain.lease_modes([jobs_pb2.JOB_MODE_UNSPECIFIED])

    assert (missing.value.reason, unknown.value.reason) == ("PARAMETER_MISSING", "MODE_UNKNOWN")


def test_list_filters() -> None:
    assert domain.mode_filter(jobs_pb2.JOB_MODE_UNSPECIFIED) is None
    assert domain.mode_filter(jobs_pb2.JOB_MODE_TEXT_TO_AUDIO) == "text_to_audio"
    assert domain.state_filter(jobs_pb2.JOB_STATE_UNSPECIFIED) is None
    assert domain.state_filter(jobs_pb2.JOB_STATE_CANCELED) == State.CANCELED
    with pytest.raises(InvalidArgument) as mode:
        domain.mode_filter(99)
    with pytest.raises(InvalidArgument) as state:
        domain.state_filter(99)

    assert (mode.value.reason, state.value.reason) == ("MODE_UNKNOWN", "PARAMETER_INVALID")


def test_progress_is_a_fraction() -> None:
    domain.check_progress(0.0)
    domain.check_progress(1.0)
    with pytest.raises(InvalidArgument):
        domain.check_progress(1.01)


def hash_of(livemode: bool, spec: jobs_pb2.JobSpec, digest: bytes = b"") -> str:
    claim = claim_of(livemode, spec, digest=digest)
    assert claim is not None
    return claim.request_hash


def test_a_claim_hashes_the_request_as_sent() -> None:
    same = hash_of(True, text_to_image())
    others = [
        hash_of(False, text_to_image()),
        hash_of(True, text_to_image("a harbour")),
        hash_of(True, text_to_image(seed=7)),
        # the same spec, one of the jobs of another OpenAI request (its `n` differs, say)
        hash_of(True, text_to_image(), digest=b"another request"),
    ]

    assert hash_of(True, text_to_image()) == same
    assert len({same, *others}) == 5
    assert claim_of(True, text_to_image(), key="") is None


def test_a_claim_key_has_at_most_255_characters() -> None:
    assert claim_of(True, text_to_image(), key="k" * 255) is not None
    with pytest.raises(InvalidArgument) as caught:
        claim_of(True, text_to_image(), key="k" * 256)

    assert (caught.value.reason, caught.value.param) == ("PARAMETER_INVALID", "idempotency_key")


def test_only_the_same_request_replays_a_created_job() -> None:
    claim = idempotency.Claim("key-1", "hash-1")

    domain.check_replay(claim, "hash-1", State.QUEUED)
    domain.check_replay(claim, "hash-1", State.FAILED)
    with pytest.raises(AlreadyExists) as reused:
        domain.check_replay(claim, "hash-2", State.QUEUED)
    with pytest.raises(Aborted) as in_use:
        domain.check_replay(claim, "hash-1", State.PENDING)

    assert (reused.value.reason, in_use.value.reason) == (
        "IDEMPOTENCY_KEY_REUSED",
        "IDEMPOTENCY_KEY_IN_USE",
    )


def test_a_hold_billing_will_not_resolve_stands_resolved_the_other_way() -> None:
    assert domain.resolved_elsewhere(HoldStatus.CAPTURED) == HoldStatus.RELEASED
    assert domain.resolved_elsewhere(HoldStatus.RELEASED) == HoldStatus.CAPTURED


@pytest.mark.parametrize("mode", list(domain.RULES))
def test_a_modes_schema_states_the_bounds_its_rules_check(mode: str) -> None:
    """What clients are told (MCP tools' schemas) is what the rules accept: each numeric field
    at its bounds passes, and just past them is refused."""
    schema = domain.mode_schema(mode)
    for rule in domain.RULES[mode]:
        field = schema["properties"][rule.field]
        if field["type"] not in ("integer", "number"):
            continue
        step = field.get("multipleOf", 1)
        for value, accepted in (
            (field["minimum"], True),
            (field["maximum"], True),
            (field["minimum"] - step, False),
            (field["maximum"] + step, False),
        ):
            spec = jobs_pb2.JobSpec(**{rule.field: value})
            if accepted:
                rule.apply(spec)
            else:
                with pytest.raises(InvalidArgument):
                    rule.apply(spec)
    assert set(schema["required"]) <= set(schema["properties"])


def test_a_modes_schema_states_its_choices_required_fields_and_defaults() -> None:
    image = domain.mode_schema("image_to_image")["properties"]
    video = domain.mode_schema("image_to_video")

    assert domain.mode_schema("image_to_image")["required"] == ["prompt", "input_asset_id"]
    assert image["prompt"]["minLength"] == 1
    assert "minLength" not in image["negative_prompt"]
    assert (image["output_format"]["enum"], image["output_format"]["default"]) == (
        ["png", "jpeg", "webp"],
        "png",
    )
    assert image["strength"]["default"] == 0.6
    assert "default" not in image["width"]  # the input's
    # A soundtrack's length when there is one, so no one default to state.
    assert "default" not in video["properties"]["duration_seconds"]
    assert "minLength" not in video["properties"]["prompt"]
