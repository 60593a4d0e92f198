"""The Hugging Face Hub side of ``gpt-scratch publish``: the token, one clear line for a failed Hub call, and the
upload (the repo, the branch for ``--revision``, one ``upload_folder`` commit of exactly the chosen files).

The token is handed to the client and never printed, logged or written.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from .card_format import redact
from .errors import UserError


def get_hub_token() -> str | None:
    """The Hub token from ``HF_TOKEN`` or the ``hf auth login`` cache; ``None`` when there is none."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    from huggingface_hub import get_token

    try:
        return get_token() or None
    except Exception as exc:  # noqa: BLE001 - e.g. a broken token file or a failed OIDC exchange
        raise UserError(
            f"could not read the Hugging Face token ({type(exc).__name__}): run `hf auth login` again or set HF_TOKEN"
        ) from None


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
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

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


def _escape_pattern(path: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", path)


def upload(folder: Path, files: list[str], repo_id: str, token: str, *, private: bool, revision: str | None,
           commit_message: str) -> tuple[str, object]:
    """Create the repo (and branch) if needed and send ``files`` in one commit. Returns (repo url, commit info)."""
    from huggingface_hub import HfApi

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
            allow_patterns=[_escape_pattern(f) for f in files],
            ignore_patterns=[".*", "*/.*", "checkpoints/*", "cache/*"],
        )
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into one line; unknown errors are re-raised by hub_error
        raise hub_error(exc, action, repo_id, token) from None
    return str(repo_url), commit


__all__ = ["get_hub_token", "hub_error", "upload"]
