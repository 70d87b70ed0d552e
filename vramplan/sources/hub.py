"""The Hub stage: download config.json only (never weights, never code) via huggingface_hub.

huggingface_hub is imported inside `fetch`, so the analytic path pays for it only when a config
really has to come from the network. HF_TOKEN, HF_ENDPOINT and the cache location are honoured by
huggingface_hub itself; the caller decides offline mode before calling here.
"""

from __future__ import annotations

from pathlib import Path

from vramplan.errors import BadConfig, EnvironmentProblem, ModelNotFound
from vramplan.sources import bundled
from vramplan.files import CONFIG_LIMIT, read_small_file


def unreachable(model: str, why: str) -> ModelNotFound:
    """The error for a model that is not on disk when the Hub cannot be asked."""
    return ModelNotFound(
        f"No model '{model}' in the bundled catalog or the local Hugging Face cache, and {why}. "
        + bundled.did_you_mean(model)
    )


def _is_network_error(e: Exception) -> bool:
    # hf_hub_download turns connection failures into LocalEntryNotFoundError (an OSError), but
    # the HEAD probe lets transport errors of its HTTP client (httpx / httpx2) through as they are.
    return isinstance(e, OSError) or type(e).__module__.split(".")[0].startswith(("httpx", "httpcore"))


def fetch(model: str) -> tuple[Path, str]:
    """Download `model`'s config.json into the HF cache; return (local file, Hub URL)."""
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:
        raise EnvironmentProblem(
            f"'{model}' is not bundled or cached, and huggingface_hub is not installed to fetch it. "
            "Install it with: pip install huggingface_hub"
        ) from None

    url = hf_hub_url(model, "config.json")
    try:
        # One HEAD without retries first: on a failed connection hf_hub_download itself retries
        # five times with back-off (~25 s, warnings on stderr) before giving up. This answers
        # "unreachable", "gated" and "missing" at once; the download then fills the HF cache.
        get_hf_file_metadata(url, timeout=10, library_name="vramplan")
        path = hf_hub_download(model, "config.json", library_name="vramplan")
    # Order matters: GatedRepoError is a RepositoryNotFoundError, and LocalEntryNotFoundError
    # (raised when the Hub cannot be reached) is an EntryNotFoundError.
    except GatedRepoError:
        raise ModelNotFound(
            f"'{model}' is a gated repo on the Hub: accept the license on "
            f"https://huggingface.co/{model} and set HF_TOKEN to a token of that account."
        ) from None
    except (RepositoryNotFoundError, HFValidationError):
        raise ModelNotFound(
            f"No model '{model}' in the bundled catalog, the local Hugging Face cache, or on the Hub "
            f"(a private repo needs HF_TOKEN). {bundled.did_you_mean(model)}"
        ) from None
    except LocalEntryNotFoundError as e:
        raise unreachable(model, "the Hub could not be reached (check the connection or HF_ENDPOINT)") from e
    except EntryNotFoundError:
        raise BadConfig(
            f"The Hub repo '{model}' has no config.json (GGUF-only and adapter repos have none). "
            "Pass the base model's id or a local config.json."
        ) from None
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        raise ModelNotFound(
            f"The Hub refused to serve config.json of '{model}' (HTTP {status}). "
            "Check HF_TOKEN, or try again later."
        ) from e
    except Exception as e:
        if _is_network_error(e):
            raise unreachable(model, "the Hub could not be reached (check the connection or HF_ENDPOINT)") from e
        raise
    return Path(path), url


def read_config(file: Path) -> bytes:
    """The downloaded config.json, read like every other file (regular, at most CONFIG_LIMIT)."""
    return read_small_file(file, CONFIG_LIMIT, "the downloaded config", EnvironmentProblem,
                           "Delete it from the Hugging Face cache and run again.")
