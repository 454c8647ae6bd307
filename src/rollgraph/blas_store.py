"""blas_choice's choices kept in a JSON file between processes, so that a second start on the same machine takes the
first one's BLAS library and cuBLASLt algorithm for each prefill product instead of timing them again.

Why: start-up timing takes ~5 s on llama-2-7b (28 shapes, perf-notes v85), and near-ties between candidates fall
either way from one process to the next, so two starts of one server could run different kernels and give different
bf16 tokens for the same prompt. With the file, every start after the first runs the first one's choices.

Entries are grouped under the machine they were timed on: the GPU's name and multiprocessor count, and the torch,
CUDA and cuBLASLt versions, so another card or library times afresh. A cuBLASLt algorithm is kept as its bytes
(lt_matmul's opaque algorithm struct, no pointers in it); on load cuBLASLt's check must accept it again for the shape,
else that shape is timed again. A file that cannot be read or parsed counts as empty; writes replace the file whole
(a temporary file, then a rename), so a reader never sees half of one, and two processes writing at once lose at most
the other's new entries, which the next start times again. Delete the file to time everything again.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import tempfile

import torch

logger = logging.getLogger(__name__)
FORMAT = 1
"""The file's format version: a file of another version counts as empty (and is replaced at the next write)."""
FILE_NAME = "rollgraph_blas_choices.json"


def default_path(compile_cache_dir: str | None = None) -> str:
    """The file next to torch.compile's on-disk cache: in `compile_cache_dir`, or in the folder inductor uses by
    default (TORCHINDUCTOR_CACHE_DIR, else <tmp>/torchinductor_<user>), worked out here as inductor does: importing
    torch._inductor to ask it takes ~3 s on a CPU machine, at every start of the CLI."""
    folder = compile_cache_dir or os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not folder:
        try:
            user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
        except (KeyError, OSError):  # no name for this uid (a container's)
            user = str(os.getuid())
        folder = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    return os.path.join(folder, FILE_NAME)


def machine(device: torch.device, cublaslt_version: int | None) -> str:
    """What the entries timed here are valid for: the GPU and the libraries that ran the products."""
    props = torch.cuda.get_device_properties(device)
    lt = "none" if cublaslt_version is None else str(cublaslt_version)
    return (
        f"{props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuBLASLt {lt}"
    )


def load(path: str, machine_key: str) -> dict[str, dict]:
    """The entries kept for `machine_key` ({shape name: entry}); {} where the file is missing, unreadable, of another
    format or holds none for this machine."""
    data = _read(path)
    entries = data.get("machines", {}).get(machine_key, {})
    return entries if isinstance(entries, dict) else {}


def save(path: str, machine_key: str, entries: dict[str, dict]) -> None:
    """Add `entries` to those kept for `machine_key` (other machines' entries stay) and write the file whole. A write
    that fails is logged and skipped: the choices in memory stand, and the next start times again."""
    data = _read(path)
    machines = data.get("machines", {})
    kept = machines.get(machine_key, {})
    machines[machine_key] = {**(kept if isinstance(kept, dict) else {}), **entries}
    text = json.dumps({"format": FORMAT, "machines": machines}, indent=1, sort_keys=True)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".blas_choices.", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        logger.warning("could not keep the BLAS choices in %s (%s); the next start times them again", path, exc)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring the BLAS choices in %s: %s", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("machines"), dict):
        return {}
    return data
