import json
import os
import random
import runpy
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import psutil
import pytest

# Nothing in the tests touches the network: a hub id fails in seconds instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# One thread per process: pytest-xdist runs one worker per core, and torch's default of a thread per
# core in each of them (and in every process they start) oversubscribes the cores; the threads'
# busy waiting then takes more CPU than the work (measured: docs/tests.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# and every Snakemake run of the tests (theirs, and those inside `dvc repro`) through tests/profile,
# which gives each job one thread whatever its rule asks for
os.environ["SNAKEMAKE_PROFILE"] = str(Path(__file__).resolve().parent / "profile")

ROOT = Path(__file__).resolve().parent.parent
# No network but loopback, here and in every Python process the tests start (tests/offline/sitecustomize.py)
OFFLINE = ROOT / "tests" / "offline"
runpy.run_path(str(OFFLINE / "sitecustomize.py"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(OFFLINE), *filter(None, [os.environ.get("PYTHONPATH")])])
MICRO = ROOT / "tests" / "config.micro.yaml"


MICRO_FIRST = "test_micro_all_end_to_end_then_nothing_to_do"
MICRO_LONGEST = ("micro_ablations", "dvc_repro")  # of the tests that need the micro run, the longest


def pytest_collection_modifyitems(config, items):
    """The order pytest-xdist hands tests out in: first the test that builds the shared micro `all`
    run (so one worker builds it at once while the other runs tests that do not need it), then every
    test that does not need it, then those that do, the longest first. Before this the
    second worker sat for minutes in a fixture, waiting for the run to be built."""

    def needs_micro(item):
        return bool({"micro_all", "micro_all_copy"} & set(getattr(item, "fixturenames", ())))

    def key(item):
        if item.name == MICRO_FIRST:
            return (0, 0)
        if not needs_micro(item):
            return (1, 0)
        return (2, next((i for i, n in enumerate(MICRO_LONGEST) if n in item.name), len(MICRO_LONGEST)))

    items.sort(key=key)  # stable: the collection order within each group


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def toy_config() -> dict:
    from vlv.config import TOY_FILES, load_config, validate_config

    return validate_config(load_config(*TOY_FILES))


@pytest.fixture(scope="session")
def micro_config() -> dict:
    from vlv.config import TOY_FILES, load_config, validate_config

    return validate_config(load_config(*TOY_FILES, MICRO))


def workflow_dir(tmp: Path) -> Path:
    """A scratch working directory that sees the package and the committed stand-ins."""
    for name in ("vlv", "models", "config"):
        (tmp / name).symlink_to(ROOT / name)
    return tmp


def run_snakemake(workdir: Path, *args: str, configfiles=(ROOT / "config.yaml", MICRO), check=True, env=None):
    env = {**os.environ, **(env or {})}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    exe = shutil.which("snakemake", path=env["PATH"])
    cmd = [
        exe,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        *map(str, configfiles),
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def dvc(wd: Path, *args: str) -> str:
    """``dvc ARGS`` in ``wd`` with this environment's tools; its output (stdout and stderr)."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    exe = str(Path(sys.executable).parent / "dvc")
    res = subprocess.run([exe, *args], cwd=wd, capture_output=True, text=True, env=env, timeout=1800)
    if res.returncode != 0:
        raise AssertionError(f"dvc {args[0]} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout + res.stderr


def dvc_repro(wd: Path, *args: str) -> str:
    return dvc(wd, "repro", *args)


def repository_copy(wd: Path, config: dict) -> Path:
    """A copy of the repository's tracked files (not the committed figures, not the tests) in ``wd``,
    with ``config`` as its config.yaml, no dvc.lock, and a git repository of its own: ``dvc repro``
    there builds every stage from scratch."""
    import yaml

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith(("results/figures/", "tests/")) or f == "dvc.lock":
            continue
        (wd / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, wd / f)
    (wd / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=wd, check=True)
    return wd


@pytest.fixture(scope="session")
def micro_all(tmp_path_factory, worker_id, micro_config) -> Path:
    """A copy of the repository (its config.yaml: the micro config) in which ``snakemake --cores 2
    all`` has run, built once per test session and shared by every pytest-xdist worker (the first to
    ask builds it under a file lock; the others wait for it). Read it only: a test that runs more
    targets there, or ``dvc repro``, takes ``micro_all_copy``."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # the workers' base folders share this parent
        shared = shared.parent
    wd, failed = shared / "micro_all", shared / "micro_all.failed"
    with FileLock(str(shared / "micro_all.lock")):
        if failed.exists():
            pytest.fail(f"the micro `all` run failed in another worker:\n{failed.read_text()}")
        if not (wd / ".built").exists():
            shutil.rmtree(wd, ignore_errors=True)
            wd.mkdir()
            workflow = {k: v for k, v in micro_config.items() if k != "pretrain_toy"}  # config/pretrain_toy.yaml
            try:
                run_snakemake(repository_copy(wd, workflow), "--cores", "2", "all")
            except AssertionError as e:
                failed.write_text(str(e))
                raise
            (wd / ".built").touch()
    return wd


@pytest.fixture
def micro_all_copy(micro_all, tmp_path) -> Path:
    """This test's own copy of ``micro_all`` (file times and Snakemake's records kept, so it is just as
    up to date), for tests that run more targets in it."""
    wd = tmp_path / "micro_all"
    shutil.copytree(micro_all, wd, symlinks=True)
    return wd


def free_port() -> int:
    """A TCP port nothing listens on now, for a launch's rendezvous (tests run side by side under
    pytest-xdist). Drawn below Linux's ephemeral range (32768-60999): a port the kernel hands out
    (``bind(0)``) can be handed out again, to another run's gloo connection, before this run's
    store binds it, and a rank left talking to the wrong listener waits until its timeout."""
    draw = random.Random(os.getpid() * 1_000_003 + time.time_ns())
    for _ in range(200):
        port = draw.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port in 20000-32000")


def accelerate_launch(
    module: str,
    args: list[str],
    processes: int = 2,
    port: int | None = None,
    config: str = "ddp",
    env_extra: dict | None = None,
    **kw,
):
    """``accelerate launch`` of a stage through a committed config (``config/accelerate/<config>.yaml``),
    as the training rules do, with ``processes`` CPU processes over gloo (one thread each). With the
    FSDP config, or a stop asked for (``VLV_TEST_STOP_AT_STEP``), the stage runs through
    ``launch_on_cpu.py``, which lets accelerate shard on a CPU and can stop the run."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / f"config/accelerate/{config}.yaml"),
    ]
    cmd += ["--num_processes", str(processes), "--main_process_port", str(port)]
    through_launcher = config == "fsdp" or "VLV_TEST_STOP_AT_STEP" in (env_extra or {})
    cmd += [str(ROOT / "tests/launch_on_cpu.py"), module] if through_launcher else ["-m", module]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT, **kw)


def finish_together(processes: list[subprocess.Popen], timeout: float) -> list[str]:
    """The outputs of processes started side by side with ``stdout=PIPE`` (text), read concurrently
    (one full pipe must not stall the others). If they are not all done within ``timeout`` seconds,
    each is killed with every process below it (torch's launcher starts its workers in sessions of
    their own) and the test fails showing what each had printed, so a hang says where it hung."""
    outs: list[str] = [""] * len(processes)

    def read(i: int) -> None:
        outs[i] = processes[i].stdout.read()

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(processes))]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout
    for p in processes:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
    hung = [i for i, p in enumerate(processes) if p.poll() is None]
    for i in hung:
        tree = psutil.Process(processes[i].pid)
        for q in [*tree.children(recursive=True), tree]:
            with suppress(psutil.NoSuchProcess):
                q.kill()
    for p, r in zip(processes, readers, strict=True):
        p.wait()
        r.join(timeout=10)
    if hung:
        shown = "\n".join(f"--- process {i} ({'hung' if i in hung else f'exit {processes[i].returncode}'}):\n"
                          f"{out[-4000:]}" for i, out in enumerate(outs))  # fmt: skip
        pytest.fail(f"processes {hung} still running after {timeout} s; killed. Their output:\n{shown}")
    return outs


TABLE_FILES = [
    f"results/tables/{t}.{ext}" for t in ("coco", "arena", "vqa", "no_stage1", "spatial") for ext in ("csv", "json")
]


@contextmanager
def killed_at_step(monkeypatch, step: int):
    """The training run inside is killed (KeyboardInterrupt) when it logs ``step``; the test fails if it is not."""
    from vlv.training import LossLog

    real = LossLog.append

    def dies(self, s, *args):
        if s == step:
            raise KeyboardInterrupt("simulated kill")
        return real(self, s, *args)

    monkeypatch.setattr(LossLog, "append", dies)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(LossLog, "append", real)


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def _serve(handler):
    """``handler`` served on 127.0.0.1 from a background thread; yields the base URL."""
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@contextmanager
def chat_server(reply):
    """An OpenAI-compatible chat endpoint on 127.0.0.1 for API tests. ``reply(authorization, body)``
    returns an HTTP status, or the reply text (sent with 200). Yields the base URL (``.../v1``)."""

    class Handler(_QuietHandler):
        def do_POST(self):  # noqa: N802 (http.server naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = reply(self.headers["Authorization"], body)
            if isinstance(answer, int):
                self.send_response(answer)
                self.end_headers()
                return
            data = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with _serve(Handler) as url:
        yield f"{url}/v1"


@contextmanager
def file_server(files: dict[str, bytes], cut_first: set[str] = frozenset()):
    """A static HTTP server on 127.0.0.1 for download tests: ``files`` maps URL paths to bytes;
    ``Range: bytes=N-`` is honoured (206); the first GET of a path in ``cut_first`` announces the
    whole length, sends half and drops the connection. Unknown paths are 404. Yields (base URL, the
    list of (path, Range header) requests seen)."""
    seen: list[tuple[str, str | None]] = []
    cut_done: set[str] = set()

    class Handler(_QuietHandler):
        def do_GET(self):  # noqa: N802 (http.server naming)
            rng = self.headers.get("Range")
            seen.append((self.path, rng))
            data = files.get(self.path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
            if start >= len(data) and start:
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path in cut_first and self.path not in cut_done:
                cut_done.add(self.path)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    with _serve(Handler) as url:
        yield url, seen


def odd_image_folder(folder: Path) -> tuple[list[str], list[str]]:
    """The issue's held-out folder of real-world oddities: (good files, broken files). Good: 16-bit,
    RGBA, CMYK, palette, EXIF-rotated, animated GIF, WebP, TIFF, a 1-pixel image, a name with spaces
    and accents, two files with the same stem. Broken: 0 bytes, text named .png, a truncated JPEG, a
    decompression bomb (a PNG whose header claims 20 000 x 20 000 pixels)."""
    import io
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((48, 40))
    good = {
        "sixteen bit.png": lambda p: Image.fromarray(np.asarray(picture.convert("L")).astype(np.uint16) * 257).save(p),
        "rgba.png": lambda p: picture.convert("RGBA").save(p),
        "cmyk.jpg": lambda p: picture.convert("CMYK").save(p),
        "palette.png": lambda p: picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(p),
        "animated.gif": lambda p: picture.save(p, save_all=True, append_images=[picture.rotate(90)], duration=100),
        "photo.webp": lambda p: picture.save(p),
        "scan.tiff": lambda p: picture.save(p),
        "one pixel.png": lambda p: Image.new("RGB", (1, 1), (200, 10, 10)).save(p),
        "café crème.jpg": lambda p: picture.save(p),
        "same.png": lambda p: picture.save(p),
        "same.jpg": lambda p: picture.save(p),
    }
    for name, save in good.items():
        save(folder / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees
    picture.save(folder / "rotated.jpg", exif=exif)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_bytes(b"this is not an image\n")
    buf = io.BytesIO()
    picture.save(buf, format="JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")  # then its header made to claim 20 000 x 20 000
    png = bytearray(buf.getvalue())
    ihdr = bytes(png[12:16]) + struct.pack(">II", 20_000, 20_000) + bytes(png[24:29])
    png[16:24] = ihdr[4:12]
    png[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    (folder / "bomb.png").write_bytes(bytes(png))
    return sorted([*good, "rotated.jpg"]), ["bomb.png", "cut.jpg", "empty.png", "text.png"]
