"""The model hub as huggingface_hub sees it: reachable or not, and the line to show when a model cannot load.

huggingface_hub's own settings decide: `HF_HUB_OFFLINE`, `HF_ENDPOINT` (a mirror), and the proxies its
requests session takes from `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`. The probe is one HEAD of the
endpoint with a short timeout and no retries, so an offline machine falls back to the local cache at once
instead of retrying for a minute.
"""
from __future__ import annotations

import threading

PROBE_TIMEOUT_S = 3.0  # connect and read; the hub answers a HEAD in well under a second when it is there


def hub_endpoint() -> str:
    """The hub URL huggingface_hub uses (`HF_ENDPOINT`, or https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_offline() -> bool:
    """True when `HF_HUB_OFFLINE` tells huggingface_hub never to go to the network."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when the hub endpoint answers one HEAD through huggingface_hub's session (its proxies, no retries)."""
    if hub_offline():
        return False
    endpoint = hub_endpoint()
    answers: list[bool] = []

    def probe() -> None:
        from huggingface_hub.utils import get_session

        try:
            response = get_session().head(endpoint, timeout=timeout_s)
        except Exception:  # noqa: BLE001 - refused, proxy, TLS, timeout, bad URL: all mean "no answer"
            answers.append(False)
        else:
            answers.append(response.status_code < 400)  # a proxy's 403/407 or a hub error would not load a model

    # requests' timeout does not bound name resolution, which can stall on a machine with a dead resolver.
    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    return bool(answers and answers[0])


def hub_hint(source: str, reachable: bool = False, detail: str = "") -> str:
    """The one line for a base model `source` that is not a local directory and did not load from the hub."""
    if reachable:
        why = f"the model hub ({hub_endpoint()}) could not provide it" + (f": {detail}" if detail else "")
    elif hub_offline():
        why = "the model hub is switched off (HF_HUB_OFFLINE) and it is not in the local cache"
    else:
        why = (f"the model hub ({hub_endpoint()}) is not reachable (behind a proxy, set HTTPS_PROXY) "
               "and it is not in the local cache")
    return (f"cannot load base model '{source}': not a local model directory, and {why}; "
            "pass --model-name PATH (a local model) or --model-name scratch (offline base)")
