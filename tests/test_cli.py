"""The command line as a user runs it: infer, export, bench engines."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from frames import poisson_frames

pytestmark = pytest.mark.processes


def ptychonn_ophyd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ptychonn_ophyd", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_infer_on_published_checkpoint_matches_authors_onnx(shared_models, tmp_path, backend):
    if backend == "torch":
        pytest.importorskip("torch")
    np.save(tmp_path / "frames.npy", poisson_frames(12, seed=7))
    outputs = {}
    for name in ["ptychonn_small_phase_nconv16.pth", "ptychonn_small_phase_nconv16_b1.onnx"]:
        out = tmp_path / f"{name}.npz"
        done = ptychonn_ophyd(
            "infer",
            "--model",
            shared_models / name,
            "--input",
            tmp_path / "frames.npy",
            "--output",
            out,
            "--backend",
            backend if name.endswith("pth") else "onnxruntime",
        )
        assert done.returncode == 0, done.stderr
        outputs[name] = np.load(out)["phase"]
    pth, onnx = outputs.values()
    assert pth.shape == (12, 128, 128)
    assert np.abs(pth - onnx).max() / np.abs(onnx).max() <= 1e-5


def test_infer_crops_and_bins_large_frames(small_phase_onnx, tmp_path):
    np.save(tmp_path / "big.npy", poisson_frames(3, (516, 516)))
    done = ptychonn_ophyd(
        "infer",
        "--model",
        small_phase_onnx,
        "--input",
        tmp_path / "big.npy",
        "--output",
        tmp_path / "out.npz",
        "--crop",
        "2",
        "--bin",
        "4",
    )
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "out.npz")["phase"].shape == (3, 128, 128)


def test_infer_writes_amplitude_for_two_head_models(make_checkpoint, tmp_path):
    _, onnx = make_checkpoint("small_amp_phase")
    np.save(tmp_path / "frames.npy", poisson_frames(2))
    done = ptychonn_ophyd(
        "infer", "--model", onnx, "--input", tmp_path / "frames.npy", "--output", tmp_path / "o.npz"
    )
    assert done.returncode == 0, done.stderr
    assert set(np.load(tmp_path / "o.npz")) == {"phase", "amplitude"}


def test_infer_with_a_broken_model_prints_one_clear_error(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not onnx at all")
    np.save(tmp_path / "frames.npy", poisson_frames(1))
    done = ptychonn_ophyd(
        "infer",
        "--model",
        tmp_path / "broken.onnx",
        "--input",
        tmp_path / "frames.npy",
        "--output",
        tmp_path / "o.npz",
    )
    assert done.returncode == 2
    assert "broken.onnx: not a valid ONNX model" in done.stderr
    assert "Traceback" not in done.stderr


def test_infer_with_frames_of_the_wrong_size_says_so(small_phase_onnx, tmp_path):
    np.save(tmp_path / "frames.npy", poisson_frames(1, (100, 100)))
    done = ptychonn_ophyd(
        "infer",
        "--model",
        small_phase_onnx,
        "--input",
        tmp_path / "frames.npy",
        "--output",
        tmp_path / "o.npz",
    )
    assert done.returncode == 2
    assert "a 100x100 frame does not become the model's 128x128 input" in done.stderr


def test_export_then_infer_round_trip(make_checkpoint, tmp_path):
    pth, _ = make_checkpoint("small_phase", seed=5)
    done = ptychonn_ophyd("export", pth, tmp_path / "m.onnx")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 2_000_000


def test_bench_engines_prints_a_row_per_backend_and_batch(small_phase_onnx):
    done = ptychonn_ophyd(
        "bench", "engines", "--model", small_phase_onnx, "--batches", "1", "2", "--seconds", "0.2"
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "onnxruntime CPU" in line]
    assert [row.split()[-4] for row in rows] == ["1", "2"]
    assert "skipped tensorrt" in done.stdout or "tensorrt" in done.stdout


def test_infer_refuses_an_output_folder_that_does_not_exist_before_inferring(
    small_phase_onnx, tmp_path
):
    np.save(tmp_path / "frames.npy", poisson_frames(1))
    output = tmp_path / "nonexistent" / "dir" / "y.npz"
    done = ptychonn_ophyd(
        "infer", "--model", small_phase_onnx, "--input", tmp_path / "frames.npy", "--output", output
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {output}: cannot write the output, folder {output.parent} does not exist"
    ]
    assert "frames/s" not in done.stdout


def test_a_demo_backend_typo_ends_at_once_in_one_line_and_writes_nothing(tmp_path):
    done = ptychonn_ophyd("demo", "--backend", "onnxruntim", "--output-dir", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith(
        "argument --backend: invalid choice: 'onnxruntim' "
        "(choose from 'auto', 'tensorrt', 'torch', 'onnxruntime')"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("where", "said"),
    [
        (["--output-dir", "{file}"], "output folder {file}: cannot create it (File exists)"),
        (
            ["--output-dir", "{dir}", "--catalog", "{file}/catalog"],
            "catalog {file}/catalog cannot be written (Not a directory): runs could not be stored",
        ),
    ],
    ids=["output-dir", "catalog"],
)
def test_a_demo_that_cannot_write_says_where_in_one_line(tmp_path, where, said):
    file, folder = tmp_path / "a-file", tmp_path / "out"
    file.write_text("")
    done = ptychonn_ophyd("demo", *(w.format(file=file, dir=folder) for w in where))
    assert done.returncode == 2
    assert done.stderr == f"ptychonn-ophyd demo: error: {said.format(file=file)}\n"
