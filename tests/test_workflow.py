"""Real Snakemake on a tiny config in a temporary directory: every table follows the contract."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from brainprop.contract import validate_results

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
pytestmark = pytest.mark.workflow
# Every figure of the tiny run: one simulated dataset with fMRI and MEG, one model, PNG only.
TINY_FIGURES = (
    [f"{kind}_sim_backprop.png" for kind in ("model_comparison", "rule_signatures", "simulation_recovery")]
    + ["cka.png"]
    + [
        f"{kind}_sim_backprop_resnet18.png"
        for kind in (
            "encoding_by_layer",
            "meg_timecourses",
            "spatial_hierarchy",
            "tmax",
            "brain_map",
            "glass_brain",
            "meg_topomaps",
        )
    ]
)


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        str(ROOT / "tests" / "configs" / "tiny.yaml"),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny")
    done = _snakemake(workdir)
    assert done.returncode == 0, done.stderr[-5000:]
    return workdir


def test_tables_follow_the_contract(tiny_run):
    assert validate_results(tiny_run / "results" / "tiny" / "tables") == []


def test_validate_results_command(tiny_run):
    done = subprocess.run(
        [str(Path(sys.executable).parent / "brainprop"), "validate-results", str(tiny_run / "results" / "tiny")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_tables_have_every_job(tiny_run):
    tables = tiny_run / "results" / "tiny" / "tables"
    enc = pd.read_parquet(tables / "encoding.parquet")
    assert set(enc["subject"]) == {"sub-01", "sub-02", "sub-03"}
    assert set(enc["signal"]) == {"act", "grad"}
    assert enc["layer_index"].nunique() == 4
    assert set(enc["modality"]) == {"fmri", "meg"}
    # The encoding null ran: every row counts its significant targets, every scored target has p and q.
    assert enc["n_significant"].between(0, enc["n_targets"]).all()
    from brainprop.encoding.files import load_target_scores

    scores = load_target_scores(next((tiny_run / "results" / "tiny" / "encoding").rglob("*.targets.parquet")))
    scored = scores[~scores["excluded"]]
    assert (scored["p"] > 0).all() and (scored["p"] <= 1).all() and scored["q"].between(0, 1).all()
    tests = pd.read_parquet(tables / "tests.parquet")
    assert {"T1", "T2", "S1a", "S1b", "E"} <= set(tests["test"])
    truth = pd.read_parquet(tiny_run / "results" / "tiny" / "truth" / "sim_backprop.parquet")
    assert list(truth.columns) == ["dataset", "subject", "source_model", "kind", "roi", "signal", "depth", "latency_s"]
    figures = sorted(p.name for p in (tiny_run / "results" / "tiny" / "figures").iterdir())
    assert figures == sorted(TINY_FIGURES)


def test_second_run_has_nothing_to_do(tiny_run):
    done = _snakemake(tiny_run, "--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in done.stdout + done.stderr


def test_runtime_settings_rerun_nothing(tiny_run, tmp_path):
    # Batch size, device and loader settings change how features are computed, not what:
    # a config that changes only them leaves every output up to date.
    import yaml

    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    config["models"]["resnet18"]["batch_size"] = "auto"
    config["extraction"] = {"workers": 1, "shard_size": 7, "progress_every_s": 5}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    done = _snakemake(tiny_run, "--dry-run", "--configfile", str(changed))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in done.stdout + done.stderr


def test_one_subjects_new_data_reruns_its_datasets_shared_fits(tiny_run, tmp_path):
    # The tiny run's three simulated subjects share one image order: their fits are one job per
    # signal x layer (encode_shared_*, joint_shared_*). New data of one subject reruns those jobs
    # (each fits every subject, one decomposition per fold) and the dataset's hierarchy (one job
    # for every subject) onward;
    # nothing upstream of the fits (docs/method.md, "Shared fits").
    from conftest import copy_run
    from test_recovery import planned_jobs

    run = copy_run(tiny_run, tmp_path / "run")
    (run / "results" / "tiny" / "brain" / "sim_backprop" / "sub-02" / "Y.npy").touch()
    done = _snakemake(run, "--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    rules = {}
    for rule, _ in planned_jobs(done.stdout):
        rules[rule] = rules.get(rule, 0) + 1
    assert rules == {
        "encode_shared_sim_backprop": 2 * 4,  # signals x layers
        "joint_shared_sim_backprop": 4,
        "hierarchy_shared_sim_backprop": 1,  # every subject in one job: the shared fits rewrite each one's files
        "group": 1,
        "compare": 1,
        "sensitivity": 1,
        "brain_map": 1,
        "meg_topomaps": 1,
        "tables": 1,
        "figures": 1,
        "all": 1,
    }, rules


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "tests" / "configs" / "tiny.yaml").read_text().replace("mode: grid", "mode: gird"))
    cmd = [
        SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "1",
        "--configfile",
        str(bad),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "models.resnet18.pooling.mode" in done.stderr + done.stdout
    assert not (tmp_path / "results").exists()


def test_lint_is_clean(tiny_run):
    done = _snakemake(tiny_run, "--lint")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Congratulations" in done.stdout + done.stderr


def test_report_builds_with_every_figure(tiny_run):
    report = tiny_run / "report.html"
    done = _snakemake(tiny_run, "--report", str(report))
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text(errors="replace")
    for name in TINY_FIGURES:
        assert name in text
    assert "tests.html" in text


# ---------------------------------------------------------------- the report in a browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Debian's Chromium headless with a fresh profile; console messages go to stderr."""
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    cmd = [
        shutil.which("chromium"),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=15000",
        *args,
    ]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180)


def _console_errors(stderr: str) -> list[str]:
    """Console lines of the page that report a JavaScript error."""
    return [
        line
        for line in stderr.splitlines()
        if ":CONSOLE" in line and any(word in line for word in ("Uncaught", "Error", "error"))
    ]


@pytest.mark.browser
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not installed (tests/browser/install_chromium.sh)"
)
def test_report_renders_in_chromium(tiny_run, tmp_path):
    report = tiny_run / "report_browser.html"
    done = _snakemake(tiny_run, "--report", str(report))
    assert done.returncode == 0, done.stderr[-3000:]
    # The report is a JavaScript app: its rendered DOM must list the run's categories, without errors.
    shown = _chromium(tmp_path, "--dump-dom", report.as_uri())
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert _console_errors(shown.stderr) == []
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", shown.stdout, flags=re.DOTALL))
    for category in ("sim_backprop", "all datasets", "tests", "Workflow"):
        assert category in text, category
    shot = tmp_path / "report.png"
    assert _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", report.as_uri()).returncode == 0
    pixels = imread(shot)
    assert pixels.shape[:2] == (900, 1280) and len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 50
    # Every embedded figure decodes in the browser: a page of <img> tags reports each natural width.
    found = re.findall(r"(data:image/png;charset=utf8;filename=([^;]+);base64,[A-Za-z0-9+/=]+)", report.read_text())
    uris = {name: uri for uri, name in found}
    assert sorted(uris) == sorted(TINY_FIGURES)
    page = tmp_path / "figures.html"
    images = "".join(f'<img src="{uris[name]}">' for name in sorted(uris))
    page.write_text(
        f"<html><body>{images}<pre id='out'></pre><script>window.onload = () => {{"
        "document.getElementById('out').textContent = Array.from(document.images)"
        ".map(i => i.complete ? i.naturalWidth : -1).join(',');};</script></body></html>"
    )
    loaded = _chromium(tmp_path, "--dump-dom", page.as_uri())
    widths = re.search(r"<pre id=\"out\">([^<]*)</pre>", loaded.stdout).group(1).split(",")
    assert len(widths) == len(uris) and all(int(w) > 100 for w in widths), dict(zip(sorted(uris), widths))


def test_joint_models_feed_e_and_the_stats_tables_exist(tiny_run):
    out = tiny_run / "results" / "tiny"
    tests = pd.read_parquet(out / "tables" / "tests.parquet")
    e = tests[tests["test"] == "E"]
    assert set(e["measure"]) == {"r_difference", "unique_variance"}
    assert e["effect"].notna().all() and set(e["family"]) == {"sim_backprop/resnet18/grad/E"}
    # E names its reference: the unique variance is against the forward stack by default (joint.reference).
    assert dict(zip(e["measure"], e["reference"])) == {"r_difference": "same_layer", "unique_variance": "stack"}
    assert len(list((out / "joint").rglob("*.summary.parquet"))) == 4 * 3  # layers x subjects
    comparisons = pd.read_parquet(out / "tables" / "comparisons.parquet")
    assert "act_vs_grad" in set(comparisons["comparison"])
    sensitivity = pd.read_parquet(out / "tables" / "sensitivity.parquet")
    assert {"default", "tmax_threshold", "exclude"} <= set(sensitivity["choice"])


def test_controls_are_planned_as_models_of_their_own(tmp_path):
    config = tmp_path / "controls.yaml"
    config.write_text((ROOT / "tests" / "configs" / "tiny.yaml").read_text().replace("    controls: []\n", ""))
    cmd = [
        SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "1",
        "--configfile",
        str(config),
        "--dry-run",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout + done.stderr
    assert "model=resnet18__shuffled_loss" in text
    # Random weights already: no random-init copy.
    assert "resnet18__random_init" not in text


def _centred_checkpoint(path: Path, n_images: int, size: int) -> Path:
    """A ResNet-18 checkpoint: seeded random weights (seed 1, not the run's 0) with the head centred on the
    demo images (bias = -W · mean pre-logits), so that the top-1 class varies across images. A random head
    predicts one class for every image, which leaves the shuffled-label control nothing to shuffle."""
    import torch

    from brainprop.features.extract import ImageDataset
    from brainprop.features.models import create_model, image_transform
    from brainprop.stimuli.demo import make_demo_images
    from brainprop.stimuli.files import write_manifest

    write_manifest(path.parent / "manifest.parquet", make_demo_images(path.parent, n_images, size))
    model = create_model("resnet18", "random", 1, size, {"zero_init_last": False})
    data = ImageDataset(path.parent / "manifest.parquet", image_transform(model, size))
    images = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(images), pre_logits=True)
        model.fc.bias.copy_(-model.fc.weight @ pre.mean(dim=0))
        assert len(set(model(images).argmax(dim=1).tolist())) > 10
    torch.save(model.state_dict(), path)
    return path


def _relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_controls_run_through_the_workflow(tmp_path):
    # The tiny run with both controls on a non-random model, cut to what the controls need: 2 layers,
    # 2 subjects, no joint models, no sensitivity choices beyond the default.
    import yaml

    from brainprop.contract import validate_table
    from brainprop.features.files import load_features

    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    images = config["stimuli"]["demo"]
    checkpoint = _centred_checkpoint(tmp_path / "weights" / "resnet18.pt", images["n_images"], images["size"])
    config["models"]["resnet18"] |= {
        "weights": str(checkpoint),
        "controls": ["random_init", "shuffled_loss"],
        "layers": {"n": 2},
    }
    config["datasets"]["sim_backprop"]["subjects"] = ["sub-01", "sub-02"]
    config |= {
        "joint": {"enabled": False},
        "hierarchy": {"min_count": 2},
        "encoding": {"alphas": {"n": 4}},
        "sensitivity": {"tmax_threshold": [], "exclude": []},
    }
    (tmp_path / "controls.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    done = subprocess.run(
        [
            SNAKEMAKE,
            "results/tiny/tables/tests.parquet",
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(run),
            "--cores",
            "2",
            "--configfile",
            str(tmp_path / "controls.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    out = run / "results" / "tiny"

    tests = pd.read_parquet(out / "tables" / "tests.parquet")
    assert validate_table("tests", tests) == []
    labels = {"resnet18": "", "resnet18__random_init": "random_init", "resnet18__shuffled_loss": "shuffled_loss"}
    assert set(tests["model"]) == set(labels)
    for model, variant in labels.items():
        rows = tests[tests["model"] == model]
        assert set(rows["base_model"]) == {"resnet18"} and set(rows["variant"]) == {variant}, model
        assert set(zip(rows["signal"], rows["test"])) == set(zip(tests["signal"], tests["test"])), model
    comparisons = pd.read_parquet(out / "tables" / "comparisons.parquet")
    assert validate_table("comparisons", comparisons) == []
    pairs = comparisons[comparisons["comparison"] == "models"]
    assert {frozenset(p) for p in zip(pairs["model_a"], pairs["model_b"])} == {
        frozenset(p)
        for p in (
            ("resnet18", "resnet18__random_init"),
            ("resnet18", "resnet18__shuffled_loss"),
            ("resnet18__random_init", "resnet18__shuffled_loss"),
        )
    }
    for side in ("a", "b"):
        assert (pairs[f"variant_{side}"] == pairs[f"model_{side}"].map(labels)).all()
        assert set(pairs[f"base_model_{side}"]) == {"resnet18"}
    assert set(comparisons.loc[comparisons["comparison"] == "rank", "model_a"]) == set(labels)

    features = {model: out / "features" / model / "demo" / "extract" for model in labels}
    for k in range(2):
        base = {s: load_features(features["resnet18"], s, k) for s in ("act", "grad")}
        random_init = load_features(features["resnet18__random_init"], "act", k)
        shuffled = {s: load_features(features["resnet18__shuffled_loss"], s, k) for s in ("act", "grad")}
        assert _relative_difference(random_init, base["act"]) > 0.1, k  # other weights
        np.testing.assert_array_equal(shuffled["act"], base["act"])  # same weights, same forward pass
        assert _relative_difference(shuffled["grad"], base["grad"]) > 0.1, k  # other labels
    log = (out / "logs" / "extract" / "resnet18__shuffled_loss" / "demo.log").read_text()
    changed = int(re.search(r"changes the label of (\d+) images", log).group(1))
    assert changed > 30, log[-2000:]
