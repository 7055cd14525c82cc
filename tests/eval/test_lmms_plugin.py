"""The lmms-eval plugin: entry-point registration, both request paths, and a real CLI run with --limit."""

import re

import pytest

from longvila.eval import lmms_plugin, videomme
from longvila.eval.lmms_run import LmmsRunError, run_lmms


def test_entry_point_registers_our_classes():
    """lmms-eval resolves --model longvila_e2e to this plugin."""
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    m = MODEL_REGISTRY_V2.get_manifest(lmms_plugin.MODEL_ID)
    assert m.simple_class_path == "longvila.eval.lmms_plugin.LongVILALmms"
    assert m.chat_class_path == "longvila.eval.lmms_plugin.LongVILAChatLmms"
    assert get_model(lmms_plugin.MODEL_ID) is lmms_plugin.LongVILAChatLmms
    assert get_model(lmms_plugin.MODEL_ID, force_simple=True) is lmms_plugin.LongVILALmms


def test_plugin_shadows_no_builtin_model():
    """Installing the project leaves every lmms-eval built-in name to lmms-eval: ours is a new name, and the
    built-in `longvila` (NVIDIA's LongVILA adapter) still resolves to lmms-eval's own class."""
    from lmms_eval.models import MODEL_REGISTRY_V2, _build_builtin_manifests, get_model

    builtin = _build_builtin_manifests()
    names = {n for m in builtin for n in (m.model_id, *m.aliases)}
    assert "longvila" in names and len(names) > 100
    ours = lmms_plugin.manifest()
    assert not ({ours.model_id, *ours.aliases} & names)
    for m in builtin:  # after the entry points are loaded, every built-in manifest is unchanged
        got = MODEL_REGISTRY_V2.get_manifest(m.model_id)
        assert (got.simple_class_path, got.chat_class_path) == (m.simple_class_path, m.chat_class_path), m.model_id
    assert not get_model("longvila").__module__.startswith("longvila.")


def test_needs_pretrained():
    with pytest.raises(ValueError, match="pretrained"):
        lmms_plugin.LongVILALmms.create_from_arg_string("num_frames=8")


class _Req:
    def __init__(self, *args):
        self.args = args


def test_simple_and_chat_paths_answer_alike(letter_ckpt, tmp_path):
    video = tmp_path / "v.mp4"
    import numpy as np

    videomme.write_mp4(video, np.full((6, 32, 32, 3), 40, np.uint8))
    doc = {"q": "Q?"}
    simple = lmms_plugin.LongVILALmms.create_from_arg_string(f"pretrained={letter_ckpt},num_frames=4")
    simple.task_dict = {"t": {"test": [doc]}}
    gen = {"max_new_tokens": 1, "until": ["\n"]}
    out_simple = simple.generate_until([_Req("Q?", gen, lambda d: [str(video)], 0, "t", "test")])
    chat = lmms_plugin.LongVILAChatLmms.create_from_arg_string(f"pretrained={letter_ckpt},num_frames=4")
    chat.task_dict = {"t": {"test": [doc]}}
    msgs = [{"role": "user", "content": [{"type": "video", "url": str(video)}, {"type": "text", "text": "Q?"}]}]
    out_chat = chat.generate_until([_Req("Q?", lambda d: msgs, gen, 0, "t", "test")])
    assert out_simple == out_chat == ["B"]
    # the rigged model always predicts "B": "B" is its greedy continuation, "C" is not, and "B" has the lower
    # loss (lmms-eval's convention: mean negative log-likelihood per token, the lowest choice wins)
    (nll_b, greedy_b), (nll_c, greedy_c) = simple.loglikelihood(
        [_Req("Q?", "B", lambda d: [str(video)], 0, "t", "test"), _Req("Q?", lambda d: "C", lambda d: [], 0, "t", "test")])
    assert greedy_b and not greedy_c and 0 <= nll_b < nll_c


def _run_cli(ckpt, tmp_path, task: str, limit: int, *extra: str):
    """Build a small embedded benchmark, run ``python -m lmms_eval`` on ``task`` with ``--limit`` and
    ``--log_samples`` -> (the questions it ran, printed metrics {name: text}, logged samples by doc_id)."""
    bench = tmp_path / "bench"
    table = videomme.build_embedded(videomme.EmbeddedConfig(
        out=str(bench), videos_per_duration=1, lengths={"short": 16, "medium": 32, "long": 48}))
    rows = videomme.load_table(table)
    limit = min(len(rows), limit)
    elsewhere = tmp_path / "elsewhere"  # the benchmark is found through the variable alone, not the working dir
    elsewhere.mkdir()
    env = {"HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "LONGVILA_VIDEOMME_ROOT": str(bench)}
    res = run_lmms(lmms_plugin.MODEL_ID, f"pretrained={ckpt},num_frames=8", [task], tmp_path / "out",
                   include_path=lmms_plugin.TASKS_DIR, limit=limit, extra=list(extra), env=env, cwd=elsewhere,
                   timeout=600)[task]
    printed = dict(re.findall(rf"\|{task}\|none\s*\|\s*0\|(\w+)\s*\|.\s*\|\s*([\d.]+|NaN)\|", res["stdout"]))
    samples = {s["doc_id"]: s for s in res["samples"]}
    assert sorted(samples) == list(range(limit)), res["stdout"][-2000:]
    return rows[:limit], printed, samples


def test_run_lmms_fails_when_no_metrics_are_written(tmp_path):
    """lmms-eval exits 0 when the model cannot load; the wrapper names the task that wrote no metrics."""
    with pytest.raises(LmmsRunError, match="no metrics for task 'longvila_videomme'"):
        run_lmms(lmms_plugin.MODEL_ID, f"pretrained={tmp_path / 'missing'}", ["longvila_videomme"], tmp_path / "out",
                 include_path=lmms_plugin.TASKS_DIR, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                                         "LONGVILA_VIDEOMME_ROOT": str(tmp_path)}, timeout=300)


@pytest.mark.slow
def test_lmms_eval_cli_run(letter_ckpt, tmp_path):
    """`python -m lmms_eval --model longvila_e2e ... --tasks longvila_videomme --limit N` on the embedded set.

    The rigged checkpoint always answers "B", so every printed accuracy must equal the share of "B"
    answers among the questions it ran (overall and per duration).
    """
    ran, printed, samples = _run_cli(letter_ckpt, tmp_path, "longvila_videomme", 7, "--gen_kwargs", "max_new_tokens=1")

    def share(sel):
        sel = [r for r in ran if sel(r)]
        return sum(r["answer"] == "B" for r in sel) / len(sel) if sel else float("nan")

    want = {"accuracy": share(lambda r: True)}
    want.update({f"acc_{d}": share(lambda r, d=d: r["duration"] == d) for d in videomme.DURATIONS})
    assert set(printed) == set(want), printed
    for k, v in want.items():
        if v != v:  # NaN: no question of that duration within the limit
            assert printed[k] == "NaN"
        else:
            assert float(printed[k]) == pytest.approx(v, abs=1e-4), k
    assert all(s["filtered_resps"] in ("B", ["B"]) for s in samples.values())


@pytest.mark.slow
def test_lmms_eval_cli_likelihood_task(letter_ckpt, tmp_path):
    """`--tasks longvila_videomme_ll` (multiple_choice): the printed accuracy equals the share of questions whose
    lowest-loss option, computed here directly with the model, is the answer."""
    import numpy as np

    from longvila.eval import prompts, runner

    ran, printed, samples = _run_cli(letter_ckpt, tmp_path, "longvila_videomme_ll", 5, "--force_simple")
    bench = tmp_path / "bench"
    lm = runner.load_model(letter_ckpt)
    correct = []
    for i, r in enumerate(ran):
        frames = videomme.read_video_frames(bench / "data" / f"{r['videoID']}.mp4", 8, allow_fewer=True)
        vis = runner.encode_frames(lm, frames)
        emb = runner.embed(lm, runner.prompt_ids(lm, r["question"], vis.shape[0])[None], vis)
        losses = []
        for o in r["options"]:
            ids = runner.answer_ids(lm, prompts.option_text(o))
            losses.append(-float(runner.option_logprobs(lm, emb, [ids])[0]) / len(ids))
        logged = [float(str(x).strip("()").split(",")[0]) for x in samples[i]["filtered_resps"]]
        assert logged == pytest.approx(losses, rel=1e-6), (i, logged, losses)
        pred = prompts.OPTION_LETTERS[int(np.argmin(losses))]
        assert samples[i]["accuracy"]["pred"] == pred
        correct.append(pred == r["answer"])
    assert float(printed["accuracy"]) == pytest.approx(float(np.mean(correct)), abs=1e-4), printed
