"""The Hugging Face Hub, in one place: what names a Hub repository, when the Hub may be reached, downloading a
model folder, the token, and uploading.

The token is handed to the client and never printed, logged or written (:func:`redact` scrubs text that could carry
it).  Everything network-bound imports ``huggingface_hub`` when it runs, so the rules here cost nothing to import.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub import get_token as cached_token
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .errors import UserError

HUB_ID = re.compile(r"^(?P<repo>(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*)(?::(?P<config>[\w.-]+))?$")
"""A Hub repository id, ``owner/name``, optionally ``:config`` (a dataset's configuration); see looks_like_hub_id."""
_FILE_SUFFIXES = (
    ".txt", ".md", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".npy", ".bin", ".yaml", ".gz", ".bz2",
    ".xz", ".zst", ".zip", ".tar", ".safetensors", ".pth", ".pt",
)
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
"""Environment variables that forbid reaching the Hub (any of ``1``/``true``/``yes``/``on``, case-insensitive)."""


def offline_flag(flags: tuple[str, ...] = OFFLINE_FLAGS) -> str | None:
    """The first of ``flags`` set to a true value, or None when the Hub may be reached.  Model and tokenizer
    downloads heed only ``HF_HUB_OFFLINE`` (pass ``("HF_HUB_OFFLINE",)``); data sets heed both."""
    for flag in flags:
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return flag
    return None


def looks_like_hub_id(value, *, config: bool = False, bare_name: bool = False) -> bool:
    """Whether ``value`` names a Hub repository rather than a local path: ``owner/name`` (letters, digits,
    ``_ . -``; each part starting with a letter or digit), not an existing path, not ending in a file extension
    such as ``.csv`` or ``.safetensors``.  ``config``: a dataset id may end in ``:config``; ``bare_name``: a model
    id may be a bare name without owner (``gpt2``)."""
    if not isinstance(value, str) or "\\" in value or Path(value).expanduser().exists():
        return False
    match = HUB_ID.match(value)
    if match is None or (match["config"] and not config) or ("/" not in match["repo"] and not bare_name):
        return False
    return not match["repo"].lower().endswith(_FILE_SUFFIXES)


def model_folder(spec, flag: str = "--model", allow_patterns: list[str] | None = None, bare_name: bool = False) -> Path:
    """A local folder for ``spec``: the folder itself, or the snapshot of a Hub model id (from the cache, or
    downloaded: only ``allow_patterns`` when given).  Offline or unreachable is one line saying so."""
    path = Path(str(spec)).expanduser()
    if path.exists():
        return path
    if not looks_like_hub_id(str(spec), bare_name=bare_name):
        raise UserError(
            f"{flag} {spec} does not exist: pass a model folder (the --out of pretrain or convert) or a Hub model id "
            "as owner/name"
        )

    offline = offline_flag(("HF_HUB_OFFLINE",))
    try:
        return Path(snapshot_download(str(spec), allow_patterns=allow_patterns))
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        raise UserError(f"{flag} {spec}: no accessible Hub repository of that name ({type(exc).__name__}); check the "
                        "id (a gated or private one needs `hf auth login`)") from None
    except Exception as exc:  # offline mode, no connection, timeouts: all mean "no network"
        why = f"{offline} is set" if offline else f"the Hub could not be reached: {type(exc).__name__}"
        raise UserError(
            f"{flag} {spec} is a Hub model id that is not in the local cache; downloading it needs the network "
            f"({why}): connect and retry, or pass a local folder that holds the model"
        ) from None


# ---- the token --------------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{16,}")


def redact(text: str) -> str:
    """Replace anything that looks like a Hugging Face token, and the token in the environment, with ``***``."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return _TOKEN_RE.sub("hf_***", text)


def get_token() -> str | None:
    """The Hub token from ``HF_TOKEN`` or the ``hf auth login`` cache; ``None`` when there is none."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token

    try:
        return cached_token() or None
    except Exception as exc:  # noqa: BLE001 - e.g. a broken token file or a failed OIDC exchange
        raise UserError(
            f"could not read the Hugging Face token ({type(exc).__name__}): run `hf auth login` again or set HF_TOKEN"
        ) from None


# ---- uploading --------------------------------------------------------------------------------------------------

_NETWORK_ERRORS = {"TransportError", "NetworkError", "ConnectError", "TimeoutException", "RequestError", "ProxyError"}


def _is_network_error(exc: BaseException) -> bool:
    depth = 0  # how far down the chain of causes
    while exc is not None and depth < 5:
        if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if any(cls.__name__ in _NETWORK_ERRORS for cls in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
        depth += 1
    return False


def hub_error(exc: BaseException, action: str, repo_id: str, token: str | None) -> UserError:
    """One clear line for a failed Hub call; the token never appears in it."""
    def clean(text: str) -> str:
        text = " ".join(str(text).split())
        if token:
            text = text.replace(token, "***")
        return redact(text)[:300]

    if isinstance(exc, OfflineModeIsEnabled):
        return UserError(
            f"HF_HUB_OFFLINE is set, so nothing can be sent to the Hub ({action}): unset HF_HUB_OFFLINE to publish, "
            "or pass --dry-run to only check the folder"
        )
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        detail = clean(getattr(exc, "server_message", None) or str(exc).splitlines()[0])
        if status == 401:
            return UserError(
                f"the Hub rejected the token while {action} (401 Unauthorized): run `hf auth login` again or set "
                "HF_TOKEN to a valid token with write access"
            )
        if status == 403:
            return UserError(
                f"the token may not write to '{repo_id}' while {action} (403 Forbidden: {detail}): use a token with "
                "write access to that user or organisation, or a repo id under your own user name"
            )
        return UserError(f"the Hub refused {action} for '{repo_id}' (HTTP {status}: {detail}); nothing was committed")
    if _is_network_error(exc):
        return UserError(
            f"could not reach the Hugging Face Hub at {constants.ENDPOINT} while {action} "
            f"({type(exc).__name__}: {clean(exc)}): check the network connection (and HF_ENDPOINT or proxy "
            "settings) and run publish again; nothing was committed"
        )
    raise exc


def upload(folder: Path, files: list[str], repo_id: str, token: str, *, private: bool, revision: str | None,
           commit_message: str) -> tuple[str, object]:
    """Create the repo (and branch) if needed and send ``files`` in one commit. Returns (repo url, commit info)."""
    api = HfApi(token=token)
    action = "creating the repo"
    try:
        repo_url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            action = f"creating branch '{revision}'"
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        action = "uploading the files"
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            allow_patterns=[re.sub(r"([\[\]*?])", r"[\1]", f) for f in files],  # each file name, literally
            ignore_patterns=[".*", "*/.*", "checkpoints/*", "cache/*"],
        )
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into one line; unknown errors are re-raised by hub_error
        raise hub_error(exc, action, repo_id, token) from None
    return str(repo_url), commit
