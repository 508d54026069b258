"""Model identity: computed from the files, compared field by field, refused when different."""

import shutil

import pytest

from calibration.identity import IdentityMismatch, TierIdentity, check_identities, mismatches
from models.identity import checkpoint_identity, folder_revision, tokenizer_hash


def test_identity_follows_the_files(tiny_zoo, tmp_path):
    cheap = checkpoint_identity(str(tiny_zoo / "cheap"), dtype="float32")
    assert cheap.revision.startswith("sha:") and cheap.tokenizer.startswith("sha:")
    assert checkpoint_identity(str(tiny_zoo / "cheap"), dtype="float32") == cheap
    strong = checkpoint_identity(str(tiny_zoo / "strong"), dtype="float32")
    assert strong.revision != cheap.revision
    assert strong.tokenizer == cheap.tokenizer  # the zoo's models share one tokenizer
    copy = tmp_path / "cheap"
    shutil.copytree(tiny_zoo / "cheap", copy)
    assert folder_revision(copy) == cheap.revision  # content, not location
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert folder_revision(copy) != cheap.revision
    (copy / "tokenizer.json").write_text("{}")
    assert tokenizer_hash(copy) != cheap.tokenizer


def test_mismatch_names_both_sides_and_ignores_unknowns():
    a = TierIdentity(model="m", revision="sha:1", dtype="float32", top_k=5, engine="vllm")
    assert mismatches(a, a) == []
    assert mismatches(a, a.model_copy(update={"engine": "auto"})) == []
    assert mismatches(a, a.model_copy(update={"engine": "transformers"})) == []
    assert mismatches(a, a.model_copy(update={"engine": "openai"})) == [
        "engine: artifact 'local', config 'openai'"
    ]
    assert mismatches(a, a.model_copy(update={"revision": ""})) == []  # unknown, not different
    diff = mismatches(a, a.model_copy(update={"revision": "sha:2", "top_k": 10}))
    assert diff == ["revision: artifact 'sha:1', config 'sha:2'", "top_k: artifact 5, config 10"]


def test_check_refuses_unless_allowed():
    rec = {"cheap": TierIdentity(model="zoo:cheap", revision="sha:1")}
    cur = {"cheap": TierIdentity(model="zoo:cheap", revision="sha:2")}
    with pytest.raises(IdentityMismatch) as err:
        check_identities(rec, cur, what="the conformal artifact x.json")
    text = str(err.value)
    assert "x.json" in text and "'sha:1'" in text and "'sha:2'" in text
    assert "allow_mismatch" in text
    assert check_identities(rec, cur, what="x", allow_mismatch=True) == [
        "tier 'cheap': revision: artifact 'sha:1', config 'sha:2'"
    ]
    assert check_identities(rec, rec, what="x") == []


def test_decoding_compares_what_changes_the_tokens():
    a = TierIdentity(model="m", decoding={"temperature": 0.0, "top_p": 1.0, "max_tokens": 10})
    assert (
        mismatches(a, a.model_copy(update={"decoding": {"temperature": 0.0, "max_tokens": 16}}))
        == []
    )
    hot = a.model_copy(update={"decoding": {"temperature": 0.7, "top_p": 1.0}})
    (diff,) = mismatches(a, hot)
    assert (
        diff.startswith("decoding: artifact {'temperature': 0.0,") and "'temperature': 0.7" in diff
    )


def test_serving_refuses_an_artifact_made_for_another_model(zoo, tmp_path):
    """served_artifact (what serving, the replay and evaluate load) checks identities."""
    from calibration.artifact import CascadeArtifact
    from calibration.config import AppArgs
    from models.served_calibration import identity_mismatches, served_artifact

    app = AppArgs.from_serve_config()
    artifact = served_artifact(app)  # the zoo's own: agrees
    assert artifact.tiers["cheap"].identity.revision.startswith("sha:")
    assert identity_mismatches(app, artifact) == []
    cheap = artifact.tiers["cheap"]
    other = cheap.model_copy(
        update={"identity": cheap.identity.model_copy(update={"revision": "sha:another"})}
    )
    path = CascadeArtifact(tiers={**artifact.tiers, "cheap": other}).save(tmp_path / "cal.json")
    raw = app.model_dump()
    raw["calibration"]["file"] = str(path)
    with pytest.raises(IdentityMismatch) as err:
        served_artifact(AppArgs.model_validate(raw))
    text = str(err.value)
    assert f"'{path}'" in text and "tier 'cheap': revision: artifact 'sha:another'" in text
    assert cheap.identity.revision in text  # the config's side, named
    raw["calibration"]["allow_mismatch"] = True
    allowed = AppArgs.model_validate(raw)
    assert served_artifact(allowed).tiers["cheap"].identity.revision == "sha:another"
    assert identity_mismatches(allowed, served_artifact(allowed))[0].startswith("tier 'cheap'")


def _router_with_foreign_head(zoo, tmp_path):
    """A copy of the zoo's router whose head says it was trained for another router."""
    import json

    from models.router_model import HEAD_CONFIG_FILE

    router = tmp_path / "router"
    shutil.copytree(zoo / "router", router)
    doc = json.loads((router / HEAD_CONFIG_FILE).read_text())
    doc["meta"]["router_checksum"] = "feedfacefeedface"
    (router / HEAD_CONFIG_FILE).write_text(json.dumps(doc))
    return router


def test_a_head_for_another_router_is_refused_offline(zoo, tmp_path):
    """The replay (every offline command's router rows) refuses it unless allow_mismatch."""
    from models.router_model import router_checksum
    from offline.replay import load_split, router_rows

    router = _router_with_foreign_head(zoo, tmp_path)
    with pytest.raises(IdentityMismatch) as err:
        load_split("test", 2, root=tmp_path, tiers=[])
    text = str(err.value)
    assert "feedfacefeedface" in text and router_checksum(router) in text
    rows = router_rows(router, ["12+7"], device="cpu", allow_mismatch=True)
    assert rows.source == "confidence_head"


def test_evaluate_exits_non_zero_on_a_head_for_another_router(zoo, tmp_path, monkeypatch):
    """Refused before any answer is generated (the check reads files only)."""
    import offline.cli.evaluate as evaluate_cmd
    from calibration.__main__ import main

    _router_with_foreign_head(zoo, tmp_path)
    monkeypatch.setattr(evaluate_cmd, "zoo_root", lambda args: tmp_path)  # no zoo build here
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--n", "2", "--n-cal", "2", "--n-fit", "2"])
    message = str(exc.value.code)
    assert message.startswith("cannot evaluate: router: the confidence head in")
    assert "feedfacefeedface" in message and "allow_mismatch: true" in message
