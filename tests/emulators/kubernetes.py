"""A stateful Kubernetes API emulator for tests: Deployments, ReplicaSets, Pods and Events.

One aiohttp server on 127.0.0.1 (port 0, read back), plain HTTP or (``tls=True``) HTTPS with a fixed
test certificate, bearer token checked, answering the REST surface the official ``kubernetes`` client
(37.x, pydantic models that validate strictly) and ``kubectl`` (Debian's 1.20 and current 1.27-1.33)
use for ``get``, ``rollout status|undo|restart|history`` and ``scale`` — with the shapes of
``shared/reference/build-test-deploy-apis.md`` section 4:

* Discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/apps``, ``/apis/apps/v1`` in
  the legacy formats (``APIVersions``, ``APIGroupList``, ``APIResourceList``), which every kubectl
  understands. Newer kubectl asks for aggregated discovery (``Accept: ...;g=apidiscovery.k8s.io``)
  and falls back when the answer is plain ``application/json``, as against a pre-1.26 server.
  ``/openapi/v2`` and ``/openapi/v3`` answer 404, which kubectl treats as "no schema" for the commands
  above. ``/healthz``, ``/livez``, ``/readyz`` answer ``ok``.
* ``apps/v1`` Deployments: get, list, watch, create, PUT (409 on a stale ``resourceVersion``), PATCH
  (strategic merge, JSON merge, JSON patch; 415 for anything else, e.g. server-side apply), delete
  (cascading); ``/status`` (get/put/patch) and ``/scale`` (``autoscaling/v1`` Scale: get/put/patch).
  ReplicaSets: get, list, watch, delete. ``v1`` Pods: get, list, watch, delete (the ReplicaSet makes
  a new one at the next tick). Events: get, list, watch. Lists across namespaces too.
* ``labelSelector`` (equality and set-based) and ``fieldSelector`` (the fields the apiserver supports
  for each resource; others answer 400 "field label not supported").
* Watch: ``?watch=true`` (any case: 30.x clients send ``True``), from ``resourceVersion`` (unset or
  "0": synthetic ADDED events first), ``timeoutSeconds``, BOOKMARK events with
  ``allowWatchBookmarks``, and a 200 + ERROR event with a 410 ``Expired`` Status when the version is
  older than the kept history (``expire_history()`` forces it).
* ``kubectl get`` asks for server-side printing (``Accept: ...;as=Table;g=meta.k8s.io``) and gets a
  ``meta.k8s.io/v1`` Table with the usual columns (READY, STATUS, RESTARTS, UP-TO-DATE, ...).
* Errors are ``metav1.Status`` objects: 400 BadRequest, 401 Unauthorized, 404 NotFound, 405
  MethodNotAllowed, 409 Conflict / AlreadyExists, 415 UnsupportedMediaType, 422 Invalid (with
  ``details.causes``), 500 for injected faults and emulator bugs.
* Objects are complete: uid, resourceVersion, generation, creationTimestamp, controller
  ownerReferences, ``pod-template-hash`` labels, ``deployment.kubernetes.io/revision`` annotations,
  the API server's defaults (strategy, revisionHistoryLimit, progressDeadlineSeconds, imagePullPolicy,
  ...); zero status fields are left out as the real server does (``omitempty``).

The deployment controller, kubelet and scheduler are simulated in ``tick()`` (call it, or let the
emulator call it every ``tick_interval`` seconds). One tick:

1. moves every pod one step: a pod made in an earlier tick starts (Running and Ready) unless its
   ReplicaSet was marked to fail (``fail_next_rollout``):
   ``image_pull`` — Pending, waiting ``ErrImagePull`` then ``ImagePullBackOff``; Warning ``Failed``
   events ("Failed to pull image ...", "Error: ErrImagePull", "Error: ImagePullBackOff") and the
   kubelet's ``BackOff`` "Back-off pulling image ..." (type Normal, as the kubelet files it);
   ``crash_loop`` — Running, restarts counting up, waiting ``CrashLoopBackOff``, Warning ``BackOff``
   "Back-off restarting failed container ...";
   ``deadline`` — Running but never Ready, Warning ``Unhealthy`` "Readiness probe failed: ...".
2. runs the deployment controller for each Deployment: a changed template (``generation >
   observedGeneration``) gets a new ReplicaSet ``<deployment>-<hash>`` with revision max+1, or reuses
   the ReplicaSet whose template matches (its old revision goes to
   ``deployment.kubernetes.io/revision-history``, as ``rollout undo`` expects); a rolling update then
   scales the new ReplicaSet up within ``maxSurge`` and old ones down within ``maxUnavailable``
   (one step per tick); the status follows (observedGeneration, replicas, updatedReplicas,
   readyReplicas, availableReplicas, unavailableReplicas; Progressing reasons
   ``NewReplicaSetCreated``/``FoundNewReplicaSet`` -> ``ReplicaSetUpdated`` ->
   ``NewReplicaSetAvailable``; Available ``MinimumReplicasAvailable``/``MinimumReplicasUnavailable``).
   A rollout that makes no progress for ``deadline_ticks`` ticks gets Progressing=False
   ``ProgressDeadlineExceeded`` (the deadline is counted in ticks, not ``progressDeadlineSeconds``).
   ``spec.paused`` stops new ReplicaSets and the deadline. Old ReplicaSets beyond
   ``revisionHistoryLimit`` are deleted.
3. makes or deletes pods so every ReplicaSet has ``spec.replicas`` of them, with the events a
   cluster shows (ScalingReplicaSet, SuccessfulCreate, Scheduled, Pulled, Created, Started).

Because a patch only bumps ``metadata.generation`` and the controller observes it at the next tick,
clients see the "Waiting for deployment spec update to be observed..." state of
``kubectl rollout status`` as they would on a real cluster.

Example::

    async with KubernetesEmulator(tick_interval=0.02) as emu:
        emu.add_deployment("prod", "web", "registry.example/team/web:1.2.3", replicas=3)
        emu.kubeconfig(tmp_path / "kubeconfig")        # context "emulator", namespace "default"
        emu.fail_next_rollout("image_pull")            # the next new ReplicaSet's pods cannot pull
        ...
        emu.settle()                                   # tick until every rollout is done or stuck
        emu.image("prod", "web"); emu.requests_to("/deployments/web", "PATCH")
        emu.slow(5.0); emu.fail_next("/deployments", status=500); await emu.down(); await emu.up()
        emu.fail_next("/deployments/web", status=200, body={...})   # any answer, e.g. a malformed object

Choices where the real server is richer (tests rely on them):

* Authentication is a single bearer token; a missing or wrong one gets 401 (as with
  ``--anonymous-auth=false``), except ``/version`` and the health endpoints, which are public.
  kubectl (client-go) reads credentials from a kubeconfig only when the server is https, so tests
  that run kubectl start the emulator with ``tls=True``; ``kubeconfig()`` then embeds the CA.
  The Python client sends its token over plain http too.
* No admission, quota, scheduling failures or namespaces objects; any namespace name works.
* Deleted pods vanish at once (no Terminating grace period). Events are never garbage-collected.
* Strategic merge knows the merge keys of the pod template (containers/env/volumes by ``name``,
  ports by ``containerPort``, volumeMounts by ``mountPath``, ...), ``$patch: replace|delete``,
  ``$retainKeys`` and ``$deleteFromPrimitiveList``; ``$setElementOrder`` is accepted and ignored.
* ``dryRun`` is honoured on PATCH/PUT/POST (nothing stored); ``limit``/``continue`` are ignored
  (lists always come whole); objects that stop matching a watch's label selector are not sent as
  DELETED.
* Fault injection (``fail_next``, ``slow``) applies before authentication, to any request whose path
  contains the given substring; emulator bugs land in ``server_errors`` and answer 500.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import itertools
import json
import math
import re
import secrets
import ssl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

__all__ = ["FAILURES", "Failure", "KubernetesEmulator", "SeenRequest"]

Failure = Literal["image_pull", "crash_loop", "deadline"]
FAILURES: tuple[str, ...] = ("image_pull", "crash_loop", "deadline")

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
HASH_LABEL = "pod-template-hash"
# Annotations the controller does not copy from a Deployment to its ReplicaSets (and `rollout undo` keeps).
_SKIP_ANNOTATIONS = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
}
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery rand.SafeEncodeString
NODE = "emulated-node-1"
_BODY: web.RequestKey[Any] = web.RequestKey("body")  # the request body, parsed once by the middleware

# A fixed self-signed certificate for `tls=True` (CA:TRUE, SAN IP:127.0.0.1 and DNS:localhost, EC P-256,
# valid until 2126). Test-only: it guards nothing but loopback traffic. Fixed rather than generated so
# that neither `cryptography` nor an `openssl` binary is needed. kubectl needs TLS to send a token at all.
TEST_CERT = """\
-----BEGIN CERTIFICATE-----
MIIB1zCCAXygAwIBAgIUYkO2galbY0mrgZKkW6GsI22rxmQwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTa3ViZXJuZXRlcy1lbXVsYXRvcjAgFw0yNjExMjYwNzM3MTVa
GA8yMTI2MTEwMjA3MzcxNVowHjEcMBoGA1UEAwwTa3ViZXJuZXRlcy1lbXVsYXRv
cjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABCIhNnao2ztpXKkbPq8/ztmBDPqt
vlUgJpxf7xFwH3uttSITWz22eqILtofRlBT+cMhkAxXNm56j3p1JWvE+QE+jgZUw
gZIwHQYDVR0OBBYEFKK+IWB2SRGKToExSEC3yBQ96/zuMB8GA1UdIwQYMBaAFKK+
IWB2SRGKToExSEC3yBQ96/zuMBoGA1UdEQQTMBGHBH8AAAGCCWxvY2FsaG9zdDAP
BgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIChDATBgNVHSUEDDAKBggrBgEF
BQcDATAKBggqhkjOPQQDAgNJADBGAiEAkBn/RL/yZaSr0MKplc86BUJoQjTo6HvR
I1hSoz7nqPECIQDJtXMThBWCY/XvMyWvPvfEFB+b7OCAm5aDdzulbU74VA==
-----END CERTIFICATE-----
"""
TEST_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3huu6SAjsi/uZcVf
7huBj/YRAr6fy+cGl7X1uxykpiahRANCAAQiITZ2qNs7aVypGz6vP87ZgQz6rb5V
ICacX+8RcB97rbUiE1s9tnqiC7aH0ZQU/nDIZAMVzZueo96dSVrxPkBP
-----END PRIVATE KEY-----
"""


# ----------------------------------------------------------------------------------------------
# Records visible to tests
# ----------------------------------------------------------------------------------------------


@dataclass
class SeenRequest:
    """One request as the emulator saw it (``status`` is filled in when it is answered)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    content_type: str
    body: Any = None  # parsed JSON when the body was JSON, else the text (None without body)
    status: int | None = None


@dataclass
class _Fault:
    substring: str
    status: int
    remaining: int
    body: Any = None


@dataclass
class _Slow:
    substring: str
    seconds: float
    remaining: int | None


@dataclass
class _Change:
    """One entry of the watch history."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    plural: str
    namespace: str
    obj: dict[str, Any]


@dataclass
class _PodState:
    """What the emulated kubelet knows about a pod."""

    failure: str | None
    ticks: int = 0
    restarts: int = 0


@dataclass
class _Rollout:
    """Controller bookkeeping per Deployment."""

    stuck_ticks: int = 0
    last_progress: tuple[Any, ...] = ()


class _Answer(Exception):
    """Raised inside a handler to answer with a metav1.Status."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details) if details else None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            out["details"] = self.details
        out["code"] = self.code
        return out


# ----------------------------------------------------------------------------------------------
# Resources and discovery
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    plural: str
    group: str  # "" for the core group
    kind: str
    singular: str
    short: tuple[str, ...]
    verbs: tuple[str, ...]
    subresources: tuple[str, ...]
    fields: frozenset[str]  # supported fieldSelector labels

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def group_resource(self) -> str:
        """`deployments.apps`, `pods`: how the apiserver names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


_META_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
_ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
KINDS: dict[str, _Kind] = {
    "deployments": _Kind(
        "deployments", "apps", "Deployment", "deployment", ("deploy",), _ALL_VERBS, ("scale", "status"), _META_FIELDS
    ),
    "replicasets": _Kind(
        "replicasets", "apps", "ReplicaSet", "replicaset", ("rs",), ("delete", "get", "list", "watch"), (), _META_FIELDS
    ),
    "pods": _Kind(
        "pods",
        "",
        "Pod",
        "pod",
        ("po",),
        ("delete", "get", "list", "watch"),
        (),
        _META_FIELDS
        | {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        },
    ),
    "events": _Kind(
        "events",
        "",
        "Event",
        "event",
        ("ev",),
        ("get", "list", "watch"),
        (),
        _META_FIELDS
        | {
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        },
    ),
}
_CATEGORIES = {"deployments": ["all"], "replicasets": ["all"], "pods": ["all"]}
_SUBRESOURCE_VERBS = ("get", "patch", "update")


def _resource_list(group_version: str, group: str) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for k in KINDS.values():
        if k.group != group:
            continue
        entry: dict[str, Any] = {
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": True,
            "kind": k.kind,
            "verbs": list(k.verbs),
            "shortNames": list(k.short),
        }
        if k.plural in _CATEGORIES:
            entry["categories"] = _CATEGORIES[k.plural]
        resources.append(entry)
        for sub in k.subresources:
            s: dict[str, Any] = {"name": f"{k.plural}/{sub}", "singularName": "", "namespaced": True}
            if sub == "scale":
                # kubectl scale finds the Scale kind here (client-go scale.NewDiscoveryScaleKindResolver).
                s.update(group="autoscaling", version="v1", kind="Scale")
            else:
                s["kind"] = k.kind
            s["verbs"] = list(_SUBRESOURCE_VERBS)
            resources.append(s)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


_APPS_GROUP = {
    "name": "apps",
    "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
    "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"},
}


# ----------------------------------------------------------------------------------------------
# Small helpers: time, names, selectors, patches
# ----------------------------------------------------------------------------------------------


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _safe_encode(digest: bytes, length: int = 10) -> str:
    return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in digest[:length])


def _random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_SAFE_ALPHABET) for _ in range(n))


def _without_hash(template: Mapping[str, Any]) -> dict[str, Any]:
    t = copy.deepcopy(dict(template))
    labels = (t.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return t


def _template_hash(template: Mapping[str, Any]) -> str:
    canonical = json.dumps(_without_hash(template), sort_keys=True, separators=(",", ":"))
    return _safe_encode(hashlib.sha256(canonical.encode()).digest())


def _image_tag(image: str) -> str:
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def _image_repo(image: str) -> str:
    if "@" in image:
        return image.split("@", 1)[0]
    head, _, last = image.rpartition("/")
    name = last.split(":", 1)[0]
    return f"{head}/{name}" if head else name


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


_REQUIREMENT = re.compile(
    r"""\s*(?:
        (?P<not>!)\s*(?P<nkey>[A-Za-z0-9_./-]+)
      | (?P<skey>[A-Za-z0-9_./-]+)\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)
      | (?P<ekey>[A-Za-z0-9_./-]+)\s*(?P<op>==|!=|=)\s*(?P<value>[A-Za-z0-9_./-]*)
      | (?P<xkey>[A-Za-z0-9_./-]+)
    )\s*(?:,|$)""",
    re.X,
)


def parse_label_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """`app=web,tier in (a,b),!x` -> [(key, op, values)] with op in = != in notin exists !exists."""
    out: list[tuple[str, str, tuple[str, ...]]] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _REQUIREMENT.match(text, pos)
        if not m or m.end() == pos:
            raise _Answer(400, "BadRequest", f"unable to parse requirement: found '{text[pos:]}'")
        if m.group("nkey"):
            out.append((m.group("nkey"), "!exists", ()))
        elif m.group("skey"):
            values = tuple(v.strip() for v in m.group("values").split(",") if v.strip())
            out.append((m.group("skey"), m.group("setop"), values))
        elif m.group("ekey"):
            op = "!=" if m.group("op") == "!=" else "="
            out.append((m.group("ekey"), op, (m.group("value"),)))
        else:
            out.append((m.group("xkey"), "exists", ()))
        pos = m.end()
    return out


def _labels_match(requirements: Iterable[tuple[str, str, tuple[str, ...]]], labels: Mapping[str, str]) -> bool:
    for key, op, values in requirements:
        have = labels.get(key)
        if (
            (op == "=" and have != values[0])
            or (op == "!=" and have == values[0])
            or (op == "in" and have not in values)
            or (op == "notin" and have in values)
            or (op == "exists" and have is None)
            or (op == "!exists" and have is not None)
        ):
            return False
    return True


def selector_requirements(selector: Mapping[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    """A metav1.LabelSelector object as requirements."""
    reqs = [(k, "=", (v,)) for k, v in (selector.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for e in selector.get("matchExpressions") or []:
        reqs.append((e["key"], ops[e["operator"]], tuple(e.get("values") or ())))
    return reqs


def selector_string(selector: Mapping[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], ",".join(e.get("values") or ())
        parts.append(
            {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key}.get(op, f"!{key}")
        )
    return ",".join(parts)


def _field_value(obj: Mapping[str, Any], label: str) -> str:
    if label == "source":
        label = "source.component"
    cur: Any = obj
    for part in label.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return "" if cur is None else str(cur)


def parse_field_selector(text: str, kind: _Kind) -> list[tuple[str, bool, str]]:
    """`a=b,c!=d` -> [(field, equal?, value)]; 400 for fields the apiserver does not index."""
    out: list[tuple[str, bool, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([^=!]+?)\s*(==|!=|=)\s*(.*)", part)
        if not m:
            raise _Answer(400, "BadRequest", f"invalid selector: '{text}'; can't understand '{part}'")
        label, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if label not in kind.fields:
            raise _Answer(400, "BadRequest", f"field label not supported: {label}")
        out.append((label, op != "!=", value))
    return out


# strategic merge: the merge key of each list field of a pod template / deployment (by field name)
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def strategic_merge(original: Any, patch: Any) -> Any:
    """Apply a strategic merge patch (the subset kubectl and the Python client send)."""
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return _strip_directives(copy.deepcopy(patch))
    if patch.get("$patch") == "replace":
        return _strip_directives({k: v for k, v in patch.items() if k != "$patch"})
    out = copy.deepcopy(original)
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(out.get(name), list):
                out[name] = [v for v in out[name] if v not in value]
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list) and key in _MERGE_KEYS:
            out[key] = _merge_list(out.get(key) or [], value, _MERGE_KEYS[key], key)
        elif isinstance(value, dict):
            if value.get("$patch") == "delete":
                out.pop(key, None)
            else:
                base = out.get(key)
                out[key] = strategic_merge(base if isinstance(base, dict) else {}, value)
        else:
            out[key] = _strip_directives(copy.deepcopy(value))
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _merge_list(original: list[Any], patch: list[Any], merge_key: str, field_name: str) -> list[Any]:
    if any(isinstance(e, dict) and e.get("$patch") == "replace" for e in patch):
        return [_strip_directives(e) for e in patch if not (isinstance(e, dict) and "$patch" in e)]
    out = copy.deepcopy(original)
    for element in patch:
        if not isinstance(element, dict) or merge_key not in element:
            raise _Answer(
                422, "Invalid", f"map: {element!r} does not contain declared merge key: {merge_key} ({field_name})"
            )
        index = next(
            (i for i, e in enumerate(out) if isinstance(e, dict) and e.get(merge_key) == element[merge_key]), None
        )
        if element.get("$patch") == "delete":
            if index is not None:
                del out[index]
        elif index is None:
            out.append(_strip_directives(element))
        else:
            out[index] = strategic_merge(out[index], element)
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _Answer(422, "Invalid", f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch; failing operations answer 422 as the apiserver does."""
    if not isinstance(ops, list):
        raise _Answer(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)

    def parent(path: str) -> tuple[Any, str]:
        parts = _pointer(path)
        if not parts:
            raise _Answer(422, "Invalid", f"cannot operate on the whole document at {path!r}")
        cur = doc
        for p in parts[:-1]:
            if isinstance(cur, dict) and p in cur:
                cur = cur[p]
            elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
                cur = cur[int(p)]
            else:
                raise _Answer(422, "Invalid", f"doc is missing path: {path}")
        return cur, parts[-1]

    def get(path: str) -> Any:
        cur = doc
        for p in _pointer(path):
            if isinstance(cur, dict) and p in cur:
                cur = cur[p]
            elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
                cur = cur[int(p)]
            else:
                raise _Answer(422, "Invalid", f"doc is missing path: {path}")
        return copy.deepcopy(cur)

    def add(path: str, value: Any, replace: bool) -> None:
        nonlocal doc
        if path == "":
            doc = value
            return
        container, last = parent(path)
        if isinstance(container, dict):
            if replace and last not in container:
                raise _Answer(422, "Invalid", f"replace operation does not apply: doc is missing key: {path}")
            container[last] = value
        elif isinstance(container, list):
            if last == "-" and not replace:
                container.append(value)
            elif last.isdigit() and int(last) <= len(container) - (1 if replace else 0):
                if replace:
                    container[int(last)] = value
                else:
                    container.insert(int(last), value)
            else:
                raise _Answer(422, "Invalid", f"index out of range at {path}")
        else:
            raise _Answer(422, "Invalid", f"doc is missing path: {path}")

    def remove(path: str) -> Any:
        container, last = parent(path)
        if isinstance(container, dict) and last in container:
            return container.pop(last)
        if isinstance(container, list) and last.isdigit() and int(last) < len(container):
            return container.pop(int(last))
        raise _Answer(422, "Invalid", f"remove operation does not apply: doc is missing path: {path}")

    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise _Answer(400, "BadRequest", f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            add(path, copy.deepcopy(op.get("value")), replace=False)
        elif kind == "replace":
            add(path, copy.deepcopy(op.get("value")), replace=True)
        elif kind == "remove":
            remove(path)
        elif kind == "move":
            add(path, remove(op["from"]), replace=False)
        elif kind == "copy":
            add(path, get(op["from"]), replace=False)
        elif kind == "test":
            if get(path) != op.get("value"):
                raise _Answer(422, "Invalid", f"testing value {path} failed: test failed")
        else:
            raise _Answer(400, "BadRequest", f"Unexpected kind: {kind}")
    return doc


def _percent_or_int(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return 0


# ----------------------------------------------------------------------------------------------
# The emulator
# ----------------------------------------------------------------------------------------------


class KubernetesEmulator:
    """See the module docstring. Use ``async with KubernetesEmulator() as emu:``."""

    def __init__(
        self,
        *,
        token: str = "emulator-token-0123456789",
        version: str = "v1.30.4",
        tick_interval: float | None = None,
        deadline_ticks: int = 8,
        bookmark_interval: float = 1.0,
        history_limit: int = 10_000,
        clock: Callable[[], float] | None = None,
        tls: bool = False,
    ) -> None:
        self.token = token
        self.tls = tls
        self.version = version
        self.tick_interval = tick_interval
        self.deadline_ticks = deadline_ticks
        self.bookmark_interval = bookmark_interval
        self.history_limit = history_limit
        self.clock: Callable[[], float] = clock or time.time

        self.port = 0
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None

        self._rv = itertools.count(1000)
        self._last_rv = 999
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {p: {} for p in KINDS}
        self._history: list[_Change] = []
        self._oldest_rv = 0  # watches from before this answer 410 Expired
        self._watchers: set[asyncio.Queue[_Change]] = set()
        self._pods: dict[str, _PodState] = {}  # pod uid -> kubelet state
        self._rs_failure: dict[str, str] = {}  # ReplicaSet uid -> failure kind of its pods
        self._rollouts: dict[str, _Rollout] = {}  # deployment uid -> controller state
        self._pending_failures: list[tuple[str, str | None]] = []  # (kind, "ns/name" or None)
        self.ticks = 0

        self.requests: list[SeenRequest] = []
        self.server_errors: list[str] = []  # emulator bugs (unexpected exceptions), for failing tests loudly
        self._faults: list[_Fault] = []
        self._slow: list[_Slow] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> KubernetesEmulator:
        """Listen on 127.0.0.1 (a free port on the first start, the same port after `up`); start ticking."""
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self._ssl_context() if self.tls else None)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        if self.tick_interval is not None and self._ticker is None:
            self.auto_tick(self.tick_interval)
        return self

    async def stop(self) -> None:
        """Stop ticking; close the listener and every open connection (watches end)."""
        self.auto_tick(None)
        await self._close()

    @staticmethod
    def _ssl_context() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as tmp:  # load_cert_chain reads files only
            cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
            cert.write_text(TEST_CERT)
            key.write_text(TEST_KEY)
            ctx.load_cert_chain(cert, key)
        return ctx

    async def _close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def down(self) -> None:
        """Refuse connections from now on (the cluster keeps running: ticks go on); `up` reopens the port."""
        await self._close()

    async def up(self) -> None:
        """Listen again on the same port, with all state kept."""
        if self._runner is None:
            await self.start()

    async def __aenter__(self) -> KubernetesEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The server URL as a kubeconfig names it (``http://127.0.0.1:PORT``, ``https://`` with `tls`)."""
        if not self.port:
            raise RuntimeError("KubernetesEmulator is not started")
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def auto_tick(self, interval: float | None) -> None:
        """Call `tick()` every `interval` seconds in the background (None: stop; tests tick by hand)."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self.tick_interval = interval
        if interval is not None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(interval))

    async def _tick_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick()
            except Exception as exc:  # an emulator bug: keep ticking, make it visible
                self.server_errors.append(f"tick: {exc!r}")

    # ------------------------------------------------------------------ kubeconfig

    def kubeconfig_dict(
        self, *, context: str = "emulator", namespace: str | None = "default", token: str | None = None
    ) -> dict[str, Any]:
        """A kubeconfig for this server (plain http, bearer token), as `load_kube_config_from_dict` takes it."""
        ctx: dict[str, Any] = {"cluster": context, "user": f"{context}-user"}
        if namespace:
            ctx["namespace"] = namespace
        cluster: dict[str, Any] = {"server": self.url}
        if self.tls:
            cluster["certificate-authority-data"] = base64.b64encode(TEST_CERT.encode()).decode()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": f"{context}-user", "user": {"token": token or self.token}}],
            "contexts": [{"name": context, "context": ctx}],
            "current-context": context,
            "preferences": {},
        }

    def kubeconfig(
        self,
        path: str | Path,
        *,
        context: str = "emulator",
        namespace: str | None = "default",
        token: str | None = None,
        extra_contexts: Mapping[str, str | None] | None = None,
    ) -> Path:
        """Write a kubeconfig file for this server; `extra_contexts` adds more contexts (name -> namespace)."""
        data = self.kubeconfig_dict(context=context, namespace=namespace, token=token)
        for name, ns in (extra_contexts or {}).items():
            more = self.kubeconfig_dict(context=name, namespace=ns, token=token)
            for key in ("clusters", "users", "contexts"):
                data[key].extend(more[key])
        p = Path(path)
        p.write_text(json.dumps(data, indent=2) + "\n")  # JSON is YAML: every kubeconfig loader reads it
        return p

    # ------------------------------------------------------------------ faults and inspection

    def fail_next(self, path_substring: str, status: int = 500, count: int = 1, *, body: Any = None) -> None:
        """The next ``count`` requests whose path contains ``path_substring`` answer ``status``: a Status,
        or ``body`` as JSON when given (e.g. a malformed object with status 200)."""
        self._faults.append(_Fault(path_substring, status, count, body))

    def slow(self, seconds: float, path_substring: str = "", count: int | None = None) -> None:
        """Delay answers by ``seconds`` (all requests unless a substring is given; ``count`` of them)."""
        self._slow.append(_Slow(path_substring, seconds, count))

    def clear_faults(self) -> None:
        """Drop pending failures and delays."""
        self._faults.clear()
        self._slow.clear()

    def expire_history(self) -> None:
        """Forget the watch history: watches from any earlier resourceVersion get a 410 Expired."""
        self._history.clear()
        self._oldest_rv = self._last_rv + 1

    def requests_to(self, substring: str, method: str | None = None) -> list[SeenRequest]:
        """The requests whose path contains ``substring`` (and with ``method``), oldest first."""
        return [r for r in self.requests if substring in r.path and (method is None or r.method == method)]

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        """The stored Deployment (a copy); KeyError when there is none."""
        return copy.deepcopy(self._objects["deployments"][(namespace, name)])

    def image(self, namespace: str, name: str, container: str | None = None) -> str:
        """The image of a container (the first one by default) in the Deployment's template."""
        containers = self._objects["deployments"][(namespace, name)]["spec"]["template"]["spec"]["containers"]
        return str(next(c for c in containers if container is None or c["name"] == container)["image"])

    def replica_sets(self, namespace: str, deployment: str) -> list[dict[str, Any]]:
        """The ReplicaSets a Deployment controls, oldest revision first (copies)."""
        d = self._objects["deployments"][(namespace, deployment)]
        return [copy.deepcopy(rs) for rs in self._owned_rs(d)]

    def pods(self, namespace: str, deployment: str | None = None) -> list[dict[str, Any]]:
        """Pods of a namespace (of one Deployment's ReplicaSets when given), copies."""
        owners: set[str] | None = None
        if deployment is not None:
            d = self._objects["deployments"][(namespace, deployment)]
            owners = {rs["metadata"]["uid"] for rs in self._owned_rs(d)}
        return [
            copy.deepcopy(p)
            for (ns, _), p in sorted(self._objects["pods"].items())
            if ns == namespace and (owners is None or _controller_uid(p) in owners)
        ]

    def events(self, namespace: str, *, involved: str | None = None) -> list[dict[str, Any]]:
        """Events of a namespace (about the object named ``involved`` when given), oldest first."""
        return [
            copy.deepcopy(e)
            for (ns, _), e in self._objects["events"].items()
            if ns == namespace and (involved is None or e["involvedObject"]["name"] == involved)
        ]

    def rollout_complete(self, namespace: str, name: str) -> bool:
        """What `kubectl rollout status` would call "successfully rolled out"."""
        return self._rollout_state(self._objects["deployments"][(namespace, name)]) == "done"

    def settle(self, max_ticks: int = 500) -> int:
        """Tick until every rollout is complete or past its deadline; returns the number of ticks."""
        for n in range(max_ticks):
            states = [self._rollout_state(d) for d in self._objects["deployments"].values()]
            if all(s in ("done", "failed", "paused") for s in states):
                return n
            self.tick()
        raise AssertionError(f"rollouts still moving after {max_ticks} ticks")

    # ------------------------------------------------------------------ test setup

    def add_deployment(
        self,
        namespace: str,
        name: str,
        image: str,
        replicas: int = 1,
        *,
        container: str | None = None,
        labels: Mapping[str, str] | None = None,
        revision_history_limit: int = 10,
        progress_deadline_seconds: int = 600,
        paused: bool = False,
        max_surge: int | str = "25%",
        max_unavailable: int | str = "25%",
    ) -> dict[str, Any]:
        """A Deployment that has been running for a while: revision 1, its ReplicaSet and Ready pods."""
        selector_labels = dict(labels or {"app": name})
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(selector_labels)},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": dict(selector_labels)},
                "template": {
                    "metadata": {"labels": dict(selector_labels)},
                    "spec": {"containers": [{"name": container or name, "image": image}]},
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": max_unavailable},
                },
                "revisionHistoryLimit": revision_history_limit,
                "progressDeadlineSeconds": progress_deadline_seconds,
                "paused": paused,
            },
        }
        self._create("deployments", namespace, body)
        # Bring it up at once, as if it had been running for a while (other deployments do not move).
        for _ in range(4 + 4 * max(replicas, 1)):
            d = self._objects["deployments"][(namespace, name)]
            self._kubelet(self.pods(namespace, name))
            self._controller(self._objects["deployments"][(namespace, name)])
            if self._rollout_state(d) in ("done", "paused"):
                break
        return self.deployment(namespace, name)

    def fail_next_rollout(self, kind: str, *, deployment: str | None = None) -> None:
        """The pods of the next ReplicaSet the controller creates (for ``"ns/name"`` or any Deployment) fail.

        ``kind``: ``image_pull``, ``crash_loop`` or ``deadline`` (never Ready). A ReplicaSet that is
        reused (a rollback) is not new and takes no failure; a failed one stays failed when reused.
        """
        if kind not in FAILURES:
            raise ValueError(f"unknown failure {kind!r}; one of {', '.join(FAILURES)}")
        self._pending_failures.append((kind, deployment))

    # ------------------------------------------------------------------ storage

    def _next_rv(self) -> int:
        self._last_rv = next(self._rv)
        return self._last_rv

    def _record(self, etype: str, plural: str, obj: dict[str, Any]) -> None:
        """Store a write: a new resourceVersion, a history entry, the watchers told."""
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        if etype == "DELETED":
            self._objects[plural].pop((ns, name), None)
        else:
            self._objects[plural][(ns, name)] = obj
        change = _Change(rv, etype, plural, ns, copy.deepcopy(obj))
        self._history.append(change)
        if len(self._history) > self.history_limit:
            dropped = self._history[: len(self._history) - self.history_limit]
            del self._history[: len(dropped)]
            self._oldest_rv = dropped[-1].rv + 1
        for q in self._watchers:
            q.put_nowait(change)

    def _new_meta(self, namespace: str, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": "",
            "creationTimestamp": _rfc3339(self.clock()),
        }

    def _create(self, plural: str, namespace: str, body: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        kind = KINDS[plural]
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = f"{meta['generateName']}{_random_suffix()}"
        if not name:
            raise _Answer(
                422,
                "Invalid",
                f'{kind.kind} "" is invalid: metadata.name: Required value: name or generateName is required',
            )
        if (namespace, name) in self._objects[plural]:
            raise _Answer(
                409,
                "AlreadyExists",
                f'{kind.group_resource} "{name}" already exists',
                {"name": name, "group": kind.group, "kind": plural} if kind.group else {"name": name, "kind": plural},
            )
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        new_meta = self._new_meta(namespace, name)
        for key in ("labels", "annotations", "ownerReferences", "generateName", "finalizers"):
            if meta.get(key):
                new_meta[key] = copy.deepcopy(meta[key])
        obj["metadata"] = new_meta
        if plural == "deployments":
            new_meta["generation"] = 1
            obj["status"] = {}
            obj["spec"] = _drop_nulls(obj.get("spec"))
            self._default_deployment(obj)
            self._validate_deployment(obj, None)
        if not dry_run:
            self._record("ADDED", plural, obj)
        return copy.deepcopy(obj)

    def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        try:
            return self._objects[plural][(namespace, name)]
        except KeyError:
            kind = KINDS[plural]
            details: dict[str, Any] = {"name": name, "kind": plural}
            if kind.group:
                details = {"name": name, "group": kind.group, "kind": plural}
            raise _Answer(404, "NotFound", f'{kind.group_resource} "{name}" not found', details) from None

    # ------------------------------------------------------------------ defaults and validation

    def _default_deployment(self, d: dict[str, Any]) -> None:
        """What the apiserver's defaulting adds, so templates compare equal the way the controller sees them."""
        spec = d.setdefault("spec", {})
        if not isinstance(spec, dict):
            return
        spec.setdefault("replicas", 1)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if isinstance(strategy, dict):
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                ru = strategy.setdefault("rollingUpdate", {})
                if isinstance(ru, dict):
                    ru.setdefault("maxSurge", "25%")
                    ru.setdefault("maxUnavailable", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        template = spec.get("template")
        if isinstance(template, dict):
            template.setdefault("metadata", {})
            pod = template.get("spec")
            if isinstance(pod, dict):
                pod.setdefault("restartPolicy", "Always")
                pod.setdefault("terminationGracePeriodSeconds", 30)
                pod.setdefault("dnsPolicy", "ClusterFirst")
                pod.setdefault("securityContext", {})
                pod.setdefault("schedulerName", "default-scheduler")
                for c in pod.get("containers") or []:
                    if isinstance(c, dict):
                        image = str(c.get("image") or "")
                        c.setdefault(
                            "imagePullPolicy",
                            "Always"
                            if image and ("@" not in image and _image_tag(image) == "latest")
                            else "IfNotPresent",
                        )
                        c.setdefault("resources", {})
                        c.setdefault("terminationMessagePath", "/dev/termination-log")
                        c.setdefault("terminationMessagePolicy", "File")

    def _validate_deployment(self, d: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = d["metadata"]["name"]
        causes: list[dict[str, str]] = []

        def invalid(path: str, reason: str, message: str) -> None:
            causes.append({"reason": reason, "message": message, "field": path})

        spec = d.get("spec")
        if not isinstance(spec, dict):
            raise _Answer(400, "BadRequest", "json: cannot unmarshal into Go struct field Deployment.spec")
        replicas = spec.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise _Answer(
                400,
                "BadRequest",
                f"json: cannot unmarshal {type(replicas).__name__} into Go struct field "
                "DeploymentSpec.spec.replicas of type int32",
            )
        if replicas < 0:
            invalid(
                "spec.replicas", "FieldValueInvalid", f"Invalid value: {replicas}: must be greater than or equal to 0"
            )
        selector = spec.get("selector")
        template = spec.get("template")
        if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
            invalid("spec.selector", "FieldValueRequired", "Required value")
        if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
            invalid("spec.template", "FieldValueRequired", "Required value")
        else:
            labels = (template.get("metadata") or {}).get("labels") or {}
            if isinstance(selector, dict) and not _labels_match(selector_requirements(selector), labels):
                invalid(
                    "spec.template.metadata.labels",
                    "FieldValueInvalid",
                    f"Invalid value: {json.dumps(labels)}: `selector` does not match template `labels`",
                )
            containers = template["spec"].get("containers")
            if not isinstance(containers, list) or not containers:
                invalid("spec.template.spec.containers", "FieldValueRequired", "Required value")
            else:
                seen: set[str] = set()
                for i, c in enumerate(containers):
                    cname = c.get("name") if isinstance(c, dict) else None
                    if not cname:
                        invalid(f"spec.template.spec.containers[{i}].name", "FieldValueRequired", "Required value")
                    elif cname in seen:
                        invalid(
                            f"spec.template.spec.containers[{i}].name",
                            "FieldValueDuplicate",
                            f'Duplicate value: "{cname}"',
                        )
                    else:
                        seen.add(cname)
                    if not (isinstance(c, dict) and c.get("image")):
                        invalid(f"spec.template.spec.containers[{i}].image", "FieldValueRequired", "Required value")
        if old is not None and old["spec"].get("selector") != spec.get("selector"):
            invalid(
                "spec.selector",
                "FieldValueInvalid",
                f"Invalid value: {json.dumps(spec.get('selector'))}: field is immutable",
            )
        if causes:
            text = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
            if len(causes) > 1:
                text = f"[{text}]"
            raise _Answer(
                422,
                "Invalid",
                f'Deployment.apps "{name}" is invalid: {text}',
                {"name": name, "group": "apps", "kind": "Deployment", "causes": causes},
            )

    # ------------------------------------------------------------------ HTTP plumbing

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        raw = await request.read() if request.can_read_body else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        seen = SeenRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            content_type=request.headers.get("Content-Type", ""),
            body=body,
        )
        self.requests.append(seen)
        request[_BODY] = body
        slow = self._take(self._slow, request.path)
        if slow is not None:
            await asyncio.sleep(slow.seconds)
        try:
            fault = self._take(self._faults, request.path)
            if fault is not None and fault.body is not None:
                seen.status = fault.status
                return web.json_response(fault.body, status=fault.status)
            if fault is not None:
                reason = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests", 504: "Timeout"}
                raise _Answer(fault.status, reason.get(fault.status, "InternalError"), "injected failure")
            self._authenticate(request)
            response = await handler(request)
        except _Answer as a:
            response = web.json_response(a.status(), status=a.code)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # an emulator bug: answer 500 and make it visible to the test
            self.server_errors.append(f"{request.method} {request.path}: {exc!r}")
            response = web.json_response(_Answer(500, "InternalError", f"emulator error: {exc!r}").status(), status=500)
        seen.status = response.status
        return response

    def _take(self, rules: list[Any], path: str) -> Any:
        for rule in list(rules):
            if rule.substring not in path:
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    rules.remove(rule)
            return rule
        return None

    def _authenticate(self, request: web.Request) -> None:
        if request.path in ("/version", "/healthz", "/livez", "/readyz"):
            return  # system:public-info-viewer
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        # The scheme is case-insensitive (RFC 7235): the in-cluster loader sends "bearer <token>".
        if scheme.lower() != "bearer" or token.strip() != self.token:
            raise _Answer(401, "Unauthorized", "Unauthorized")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        method = request.method
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if method == "GET":
            discovery = self._discovery(path)
            if discovery is not None:
                return web.json_response(discovery)
        segs = path.strip("/").split("/")
        if segs[:2] == ["api", "v1"]:
            rest, group = segs[2:], ""
        elif segs[:3] == ["apis", "apps", "v1"]:
            rest, group = segs[3:], "apps"
        else:
            raise _Answer(
                404,
                "NotFound",
                "the server could not find the requested resource",
                {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]},
            )
        namespace: str | None = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in KINDS or KINDS[rest[0]].group != group or len(rest) > 3:
            raise _Answer(404, "NotFound", "the server could not find the requested resource")
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in KINDS[plural].subresources:
            raise _Answer(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            if method == "GET":
                if _truthy(request.query.get("watch")):
                    return await self._watch(request, plural, namespace)
                listed = self._list(request, plural, namespace)
                if _wants_table(request):
                    return web.json_response(self._table(request, plural, listed["items"], listed["metadata"]))
                return web.json_response(listed)
            if method == "POST" and namespace is not None and "create" in KINDS[plural].verbs:
                body = self._json_body(request)
                if not isinstance(body, dict):
                    raise _Answer(400, "BadRequest", "the body of the request was in an unknown format")
                dry = bool(request.query.get("dryRun"))
                return web.json_response(self._create(plural, namespace, body, dry_run=dry), status=201)
            raise self._not_allowed()
        if namespace is None:
            raise _Answer(404, "NotFound", "the server could not find the requested resource")
        if sub == "scale":
            return web.json_response(await self._scale(request, namespace, name))
        if sub == "status":
            return web.json_response(self._status_subresource(request, namespace, name))
        if method == "GET":
            obj = copy.deepcopy(self._get(plural, namespace, name))
            if _wants_table(request):
                return web.json_response(self._table(request, plural, [obj], {"resourceVersion": str(self._last_rv)}))
            return web.json_response(obj)
        if method == "DELETE" and "delete" in KINDS[plural].verbs:
            return web.json_response(self._delete(plural, namespace, name))
        if plural == "deployments" and method in ("PUT", "PATCH"):
            return web.json_response(self._write_deployment(request, namespace, name))
        raise self._not_allowed()

    @staticmethod
    def _not_allowed() -> _Answer:
        return _Answer(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _discovery(self, path: str) -> dict[str, Any] | None:
        if path == "/version":
            m = re.match(r"v(\d+)\.(\d+)", self.version)
            major, minor = (m.group(1), m.group(2)) if m else ("1", "30")
            return {
                "major": major,
                "minor": minor,
                "gitVersion": self.version,
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.22.5",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}],
            }
        if path == "/api/v1":
            return _resource_list("v1", "")
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_APPS_GROUP]}
        if path == "/apis/apps":
            return {"kind": "APIGroup", "apiVersion": "v1", **_APPS_GROUP}
        if path == "/apis/apps/v1":
            return _resource_list("apps/v1", "apps")
        return None

    @staticmethod
    def _json_body(request: web.Request) -> Any:
        body = request[_BODY]
        if body is None or isinstance(body, str):
            raise _Answer(400, "BadRequest", "the body of the request was in an unknown format - expected JSON")
        return body

    # ------------------------------------------------------------------ reads

    def _matching(
        self, request: web.Request, plural: str, namespace: str | None
    ) -> Callable[[Mapping[str, Any]], bool]:
        kind = KINDS[plural]
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""), kind)

        def match(obj: Mapping[str, Any]) -> bool:
            meta = obj["metadata"]
            if namespace is not None and meta["namespace"] != namespace:
                return False
            if not _labels_match(labels, meta.get("labels") or {}):
                return False
            return all((_field_value(obj, f) == v) == eq for f, eq, v in fields)

        return match

    def _list(self, request: web.Request, plural: str, namespace: str | None) -> dict[str, Any]:
        match = self._matching(request, plural, namespace)
        items = []
        for obj in self._objects[plural].values():
            if match(obj):
                item = copy.deepcopy(obj)
                # Typed lists carry no kind/apiVersion on their items (clients fill them from the list).
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        items.sort(key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))
        kind = KINDS[plural]
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(self._last_rv)},
            "items": items,
        }

    async def _watch(self, request: web.Request, plural: str, namespace: str | None) -> web.StreamResponse:
        match = self._matching(request, plural, namespace)
        kind = KINDS[plural]
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        bookmarks = _truthy(request.query.get("allowWatchBookmarks"))
        rv_text = request.query.get("resourceVersion", "")
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        await response.prepare(request)
        queue: asyncio.Queue[_Change] = asyncio.Queue()
        self._watchers.add(queue)  # before replaying, so nothing written meanwhile is lost

        async def send(etype: str, obj: Mapping[str, Any]) -> None:
            await response.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

        try:
            if rv_text in ("", "0"):
                last = self._last_rv
                for obj in sorted(self._objects[plural].values(), key=lambda o: int(o["metadata"]["resourceVersion"])):
                    if match(obj):
                        await send("ADDED", obj)
            else:
                try:
                    last = int(rv_text)
                except ValueError:
                    last = -1
                if last < self._oldest_rv - 1 or last < 0:
                    status = _Answer(
                        410, "Expired", f"too old resource version: {rv_text} ({self._oldest_rv})"
                    ).status()
                    await send("ERROR", status)
                    return response
                for change in list(self._history):
                    if change.rv > last and change.plural == plural and match(change.obj):
                        await send(change.type, change.obj)
                        last = change.rv
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            next_bookmark = loop.time() + self.bookmark_interval
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                if now >= next_bookmark:
                    # Periodic, whatever else changes (the apiserver sends them about once a minute).
                    next_bookmark = now + self.bookmark_interval
                    if bookmarks:
                        mark = {
                            "kind": kind.kind,
                            "apiVersion": kind.api_version,
                            "metadata": {"resourceVersion": str(self._last_rv)},
                        }
                        await send("BOOKMARK", mark)
                    continue
                try:
                    change = await asyncio.wait_for(queue.get(), min(deadline, next_bookmark) - now)
                except TimeoutError:
                    continue
                if change.rv > last and change.plural == plural and match(change.obj):
                    last = change.rv
                    await send(change.type, change.obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(queue)
        return response

    def _table(
        self, request: web.Request, plural: str, items: list[dict[str, Any]], list_meta: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A meta.k8s.io/v1 Table, as the apiserver prints for `kubectl get` (server-side printing)."""
        now = self.clock()
        include = request.query.get("includeObject", "Metadata")
        columns, cells = _TABLE_COLUMNS[plural], _TABLE_CELLS[plural]
        rows = []
        for obj in items:
            row: dict[str, Any] = {"cells": cells(obj, now)}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": copy.deepcopy(obj["metadata"]),
                }
            rows.append(row)
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": dict(list_meta),
            "columnDefinitions": [
                {"name": n, "type": t, "format": "name" if n == "Name" else "", "description": n, "priority": prio}
                for n, t, prio in columns
            ],
            "rows": rows,
        }

    # ------------------------------------------------------------------ writes

    def _content_patch(self, request: web.Request, current: dict[str, Any]) -> dict[str, Any]:
        """The object after applying the request's PATCH body to `current` (by content type)."""
        ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        body = request[_BODY]
        if isinstance(body, str) or body is None:
            raise _Answer(400, "BadRequest", "the body of the request was in an unknown format")
        if ctype == "application/strategic-merge-patch+json":
            if not isinstance(body, dict):
                raise _Answer(
                    400, "BadRequest", "json: cannot unmarshal array into Go value of type map[string]interface {}"
                )
            result = strategic_merge(current, body)
        elif ctype == "application/merge-patch+json":
            result = merge_patch(current, body)
        elif ctype == "application/json-patch+json":
            result = json_patch(current, body)
        else:
            raise _Answer(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: "
                f"application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
                f" (got {ctype or 'none'})",
            )
        if not isinstance(result, dict):
            raise _Answer(422, "Invalid", "the patch did not produce an object")
        return result

    def _check_rv(self, wanted: Any, current: dict[str, Any], plural: str) -> None:
        if wanted and str(wanted) != current["metadata"]["resourceVersion"]:
            kind = KINDS[plural]
            name = current["metadata"]["name"]
            raise _Answer(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.group_resource} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "group": kind.group, "kind": plural},
            )

    def _write_deployment(self, request: web.Request, namespace: str, name: str) -> dict[str, Any]:
        current = self._get("deployments", namespace, name)
        if request.method == "PUT":
            new = copy.deepcopy(self._json_body(request))
            if not isinstance(new, dict):
                raise _Answer(400, "BadRequest", "the body of the request was in an unknown format")
            self._check_rv((new.get("metadata") or {}).get("resourceVersion"), current, "deployments")
        else:
            new = self._content_patch(request, current)
            wanted = (new.get("metadata") or {}).get("resourceVersion")
            if wanted != current["metadata"]["resourceVersion"]:
                self._check_rv(wanted, current, "deployments")
        return self._store_deployment(request, current, new, status_only=False)

    def _store_deployment(
        self, request: web.Request, current: dict[str, Any], new: dict[str, Any], *, status_only: bool
    ) -> dict[str, Any]:
        meta = new.get("metadata") if isinstance(new.get("metadata"), dict) else {}
        if meta.get("name") not in (None, current["metadata"]["name"]):
            raise _Answer(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                f"({current['metadata']['name']})",
            )
        out = copy.deepcopy(current)
        if status_only:
            out["status"] = copy.deepcopy(new.get("status") or {})
        else:
            # System-owned metadata stays; labels/annotations and the spec come from the request.
            for key in ("labels", "annotations"):
                value = meta.get(key)
                if value and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
                    raise _Answer(
                        400,
                        "BadRequest",
                        f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{key} of type string",
                    )
                if value:
                    out["metadata"][key] = copy.deepcopy(value)
                else:
                    out["metadata"].pop(key, None)
            out["spec"] = _drop_nulls(new.get("spec"))
            self._default_deployment(out)
            self._validate_deployment(out, current)
            if out["spec"] != current["spec"]:
                out["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        if request.query.get("dryRun"):
            return out
        if out != current:
            self._record("MODIFIED", "deployments", out)
        return copy.deepcopy(
            self._objects["deployments"][(current["metadata"]["namespace"], current["metadata"]["name"])]
        )

    def _status_subresource(self, request: web.Request, namespace: str, name: str) -> dict[str, Any]:
        current = self._get("deployments", namespace, name)
        if request.method == "GET":
            return copy.deepcopy(current)
        if request.method == "PUT":
            new = self._json_body(request)
            self._check_rv((new.get("metadata") or {}).get("resourceVersion"), current, "deployments")
        elif request.method == "PATCH":
            new = self._content_patch(request, current)
        else:
            raise self._not_allowed()
        return self._store_deployment(request, current, new, status_only=True)

    def _scale_object(self, d: dict[str, Any]) -> dict[str, Any]:
        meta = d["metadata"]
        status: dict[str, Any] = {"replicas": int(d.get("status", {}).get("replicas", 0))}
        selector = selector_string(d["spec"]["selector"])
        if selector:
            status["selector"] = selector
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
                "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": d["spec"]["replicas"]},
            "status": status,
        }

    async def _scale(self, request: web.Request, namespace: str, name: str) -> dict[str, Any]:
        current = self._get("deployments", namespace, name)
        scale = self._scale_object(current)
        if request.method == "GET":
            return scale
        if request.method == "PUT":
            new = self._json_body(request)
            if not isinstance(new, dict):
                raise _Answer(400, "BadRequest", "the body of the request was in an unknown format")
            self._check_rv((new.get("metadata") or {}).get("resourceVersion"), current, "deployments")
        elif request.method == "PATCH":
            new = self._content_patch(request, scale)
            wanted = (new.get("metadata") or {}).get("resourceVersion")
            if wanted != current["metadata"]["resourceVersion"]:
                self._check_rv(wanted, current, "deployments")
        else:
            raise self._not_allowed()
        replicas = (new.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise _Answer(
                422,
                "Invalid",
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: {json.dumps(replicas)}: '
                "must be greater than or equal to 0",
                {
                    "name": name,
                    "group": "autoscaling",
                    "kind": "Scale",
                    "causes": [
                        {
                            "reason": "FieldValueInvalid",
                            "message": "must be greater than or equal to 0",
                            "field": "spec.replicas",
                        }
                    ],
                },
            )
        updated = copy.deepcopy(current)
        updated["spec"]["replicas"] = replicas
        stored = self._store_deployment(request, current, updated, status_only=False)
        return self._scale_object(stored)

    def _delete(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        obj = copy.deepcopy(self._get(plural, namespace, name))
        if plural == "deployments":
            for rs in self._owned_rs(obj):
                self._delete_rs(rs)
            self._rollouts.pop(obj["metadata"]["uid"], None)
        elif plural == "replicasets":
            self._delete_rs(obj)
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": "apps", "kind": plural, "uid": obj["metadata"]["uid"]},
            }
        elif plural == "pods":
            self._pods.pop(obj["metadata"]["uid"], None)
        self._record("DELETED", plural, obj)
        kind = KINDS[plural]
        details: dict[str, Any] = {"name": name, "kind": plural, "uid": obj["metadata"]["uid"]}
        if kind.group:
            details["group"] = kind.group
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def _delete_rs(self, rs: dict[str, Any]) -> None:
        uid = rs["metadata"]["uid"]
        for pod in [p for p in self._objects["pods"].values() if _controller_uid(p) == uid]:
            self._pods.pop(pod["metadata"]["uid"], None)
            self._record("DELETED", "pods", copy.deepcopy(pod))
        self._rs_failure.pop(uid, None)
        if (rs["metadata"]["namespace"], rs["metadata"]["name"]) in self._objects["replicasets"]:
            self._record("DELETED", "replicasets", copy.deepcopy(rs))

    # ------------------------------------------------------------------ events

    def _event(
        self,
        obj: Mapping[str, Any],
        etype: str,
        reason: str,
        message: str,
        component: str,
        *,
        field_path: str | None = None,
    ) -> None:
        """Record an event about `obj`, aggregated (count, lastTimestamp) like the event recorder does."""
        meta = obj["metadata"]
        ns = meta["namespace"]
        involved: dict[str, Any] = {
            "kind": obj.get("kind") or "Pod",
            "namespace": ns,
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": obj.get("apiVersion") or "v1",
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if field_path:
            involved["fieldPath"] = field_path
        now = _rfc3339(self.clock())
        for existing in self._objects["events"].values():
            io = existing["involvedObject"]
            if (
                io["uid"] == involved["uid"]
                and io.get("fieldPath") == field_path
                and existing["reason"] == reason
                and existing["message"] == message
                and existing["type"] == etype
            ):
                updated = copy.deepcopy(existing)
                updated["count"] = int(updated.get("count", 1)) + 1
                updated["lastTimestamp"] = now
                self._record("MODIFIED", "events", updated)
                return
        host = NODE if component == "kubelet" else ""
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {**self._new_meta(ns, f"{meta['name']}.{secrets.token_hex(8)}")},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": {"component": component, **({"host": host} if host else {})},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": etype,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": host,
        }
        self._record("ADDED", "events", event)

    # ------------------------------------------------------------------ the simulated cluster

    def tick(self) -> None:
        """One step of the kubelet, the deployment controller and the ReplicaSet controller (see module doc)."""
        self.ticks += 1
        self._kubelet()
        for key in sorted(self._objects["deployments"]):
            d = self._objects["deployments"].get(key)
            if d is not None:
                self._controller(d)

    def _owned_rs(self, d: Mapping[str, Any]) -> list[dict[str, Any]]:
        uid, ns = d["metadata"]["uid"], d["metadata"]["namespace"]
        owned = [
            rs for (rns, _), rs in self._objects["replicasets"].items() if rns == ns and _controller_uid(rs) == uid
        ]
        return sorted(owned, key=_revision)

    def _rs_pods(self, rs: Mapping[str, Any]) -> list[dict[str, Any]]:
        uid = rs["metadata"]["uid"]
        pods = [p for p in self._objects["pods"].values() if _controller_uid(p) == uid]
        return sorted(pods, key=lambda p: p["metadata"]["name"])

    def _rollout_state(self, d: Mapping[str, Any]) -> str:
        """done | failed | paused | waiting, as kubectl's DeploymentStatusViewer would see the stored object."""
        if d["spec"].get("paused"):
            return "paused"
        st = d.get("status") or {}
        if d["metadata"].get("generation", 0) > st.get("observedGeneration", 0):
            return "waiting"
        for c in st.get("conditions") or []:
            if c["type"] == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
                return "failed"
        upd, rep, avail = st.get("updatedReplicas", 0), st.get("replicas", 0), st.get("availableReplicas", 0)
        if upd < d["spec"]["replicas"] or rep > upd or avail < upd:
            return "waiting"
        return "done"

    def _kubelet(self, only: Iterable[Mapping[str, Any]] | None = None) -> None:
        keys = (
            sorted(self._objects["pods"])
            if only is None
            else [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in only]
        )
        for key in keys:
            pod = self._objects["pods"].get(key)
            if pod is None:
                continue
            state = self._pods.get(pod["metadata"]["uid"])
            if state is None:
                continue
            state.ticks += 1
            updated = copy.deepcopy(pod)
            self._pod_step(updated, state)
            if updated != pod:
                self._record("MODIFIED", "pods", updated)

    def _pod_step(self, pod: dict[str, Any], state: _PodState) -> None:
        """Move a pod one kubelet step along its (healthy or failing) life."""
        now = _rfc3339(self.clock())
        container = pod["spec"]["containers"][0]
        cname, image = container["name"], container["image"]
        field_path = f"spec.containers{{{cname}}}"
        pod_name, ns, uid = pod["metadata"]["name"], pod["metadata"]["namespace"], pod["metadata"]["uid"]
        image_id = f"{_image_repo(image)}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"
        statuses = pod["status"]["containerStatuses"]

        def conditions(ready: bool, reason: str | None = None) -> None:
            flag = "True" if ready else "False"
            conds = []
            for ctype in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"):
                c: dict[str, Any] = {"type": ctype, "status": "True", "lastProbeTime": None}
                old = next((o for o in pod["status"]["conditions"] if o["type"] == ctype), None)
                if ctype in ("Ready", "ContainersReady"):
                    c["status"] = flag
                    if not ready:
                        c["reason"] = "ContainersNotReady"
                        c["message"] = f"containers with unready status: [{cname}]"
                c["lastTransitionTime"] = old["lastTransitionTime"] if old and old["status"] == c["status"] else now
                conds.append(c)
            pod["status"]["conditions"] = conds

        for s in statuses:
            if s["name"] != cname:
                # Side containers just run.
                s.update(ready=True, started=True, imageID=image_id, state={"running": {"startedAt": now}})
        main = next(s for s in statuses if s["name"] == cname)
        if state.failure == "image_pull":
            pod["status"]["phase"] = "Pending"
            if state.ticks == 1:
                self._event(pod, "Normal", "Pulling", f'Pulling image "{image}"', "kubelet", field_path=field_path)
                self._event(
                    pod,
                    "Warning",
                    "Failed",
                    f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack '
                    f'image "{image}": failed to resolve reference "{image}": {image}: not found',
                    "kubelet",
                    field_path=field_path,
                )
                self._event(pod, "Warning", "Failed", "Error: ErrImagePull", "kubelet", field_path=field_path)
                waiting = {
                    "reason": "ErrImagePull",
                    "message": f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
                    "not found",
                }
            else:
                # The kubelet files this one as Normal (images/image_manager.go); the Warning is
                # "Error: ImagePullBackOff".
                self._event(
                    pod, "Normal", "BackOff", f'Back-off pulling image "{image}"', "kubelet", field_path=field_path
                )
                self._event(pod, "Warning", "Failed", "Error: ImagePullBackOff", "kubelet", field_path=field_path)
                waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
            main.update(ready=False, started=False, state={"waiting": waiting})
            conditions(False)
            return
        if state.ticks == 1:
            self._event(
                pod,
                "Normal",
                "Pulled",
                f'Container image "{image}" already present on machine',
                "kubelet",
                field_path=field_path,
            )
            self._event(pod, "Normal", "Created", f"Created container {cname}", "kubelet", field_path=field_path)
            self._event(pod, "Normal", "Started", f"Started container {cname}", "kubelet", field_path=field_path)
        pod["status"]["phase"] = "Running"
        pod["status"].setdefault("startTime", now)
        pod["status"]["podIP"] = pod["status"]["podIPs"][0]["ip"]
        main["imageID"] = image_id
        main["containerID"] = f"containerd://{hashlib.sha256((uid + str(state.restarts)).encode()).hexdigest()}"
        if state.failure == "crash_loop":
            if state.ticks == 1:
                main.update(ready=False, started=True, state={"running": {"startedAt": now}})
            else:
                state.restarts += 1
                backoff = min(10 * 2 ** (state.restarts - 1), 300)
                main.update(
                    ready=False,
                    started=False,
                    restartCount=state.restarts,
                    lastState={
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "startedAt": now,
                            "finishedAt": now,
                            "containerID": main["containerID"],
                        }
                    },
                    state={
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off {backoff}s restarting failed container={cname} "
                            f"pod={pod_name}_{ns}({uid})",
                        }
                    },
                )
                self._event(
                    pod,
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {cname} in pod {pod_name}_{ns}({uid})",
                    "kubelet",
                    field_path=field_path,
                )
            conditions(False)
            return
        if state.failure == "deadline":
            main.update(
                ready=False,
                started=True,
                state={"running": {"startedAt": main.get("state", {}).get("running", {}).get("startedAt", now)}},
            )
            self._event(
                pod,
                "Warning",
                "Unhealthy",
                "Readiness probe failed: HTTP probe failed with statuscode: 503",
                "kubelet",
                field_path=field_path,
            )
            conditions(False)
            return
        started_at = (main.get("state") or {}).get("running", {}).get("startedAt", now)
        main.update(ready=True, started=True, state={"running": {"startedAt": started_at}})
        conditions(True)

    def _new_pod(self, rs: dict[str, Any]) -> None:
        template = rs["spec"]["template"]
        ns = rs["metadata"]["namespace"]
        name = f"{rs['metadata']['name']}-{_random_suffix()}"
        meta = self._new_meta(ns, name)
        meta["generateName"] = f"{rs['metadata']['name']}-"
        meta["labels"] = copy.deepcopy((template.get("metadata") or {}).get("labels") or {})
        if (template.get("metadata") or {}).get("annotations"):
            meta["annotations"] = copy.deepcopy(template["metadata"]["annotations"])
        meta["ownerReferences"] = [_owner_ref(rs)]
        spec = copy.deepcopy(template["spec"])
        spec["nodeName"] = NODE
        spec.setdefault("serviceAccountName", "default")
        n = sum(1 for _ in self._objects["pods"]) + 1
        ip = f"10.244.{(n // 250) % 250}.{n % 250 + 2}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": spec,
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "True",
                        "lastProbeTime": None,
                        "lastTransitionTime": meta["creationTimestamp"],
                    }
                ],
                "hostIP": "192.168.49.2",
                "podIPs": [{"ip": ip}],
                "qosClass": "BestEffort",
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                        "lastState": {},
                    }
                    for c in spec["containers"]
                ],
            },
        }
        self._pods[meta["uid"]] = _PodState(self._rs_failure.get(rs["metadata"]["uid"]))
        self._record("ADDED", "pods", pod)
        self._event(rs, "Normal", "SuccessfulCreate", f"Created pod: {name}", "replicaset-controller")
        self._event(pod, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {NODE}", "default-scheduler")

    def _sync_rs(self, rs: dict[str, Any]) -> None:
        """The ReplicaSet controller: as many pods as spec.replicas; then its status."""
        pods = self._rs_pods(rs)
        want = rs["spec"]["replicas"]
        for _ in range(want - len(pods)):
            self._new_pod(rs)
        if len(pods) > want:
            # Not-ready pods go first, then the youngest (controller.ActivePodsWithRanks, roughly).
            victims = sorted(pods, key=lambda p: (_pod_ready(p), p["metadata"]["creationTimestamp"]))[
                : len(pods) - want
            ]
            for pod in victims:
                self._pods.pop(pod["metadata"]["uid"], None)
                self._record("DELETED", "pods", copy.deepcopy(pod))
                self._event(
                    rs, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", "replicaset-controller"
                )
        pods = self._rs_pods(rs)
        ready = sum(1 for p in pods if _pod_ready(p))
        status: dict[str, Any] = {"replicas": len(pods)}
        if pods:
            status["fullyLabeledReplicas"] = len(pods)
        if ready:
            status["readyReplicas"] = ready
            status["availableReplicas"] = ready
        status["observedGeneration"] = rs["metadata"]["generation"]
        if status != rs.get("status"):
            updated = copy.deepcopy(rs)
            updated["status"] = status
            self._record("MODIFIED", "replicasets", updated)

    def _rs_counts(self, rs: Mapping[str, Any]) -> tuple[int, int]:
        """(pods, available pods) of a ReplicaSet, from its pods."""
        pods = self._rs_pods(rs)
        return len(pods), sum(1 for p in pods if _pod_ready(p))

    def _set_rs_replicas(self, d: dict[str, Any], rs: dict[str, Any], replicas: int) -> dict[str, Any]:
        old = rs["spec"]["replicas"]
        if old == replicas and rs["metadata"]["annotations"].get(DESIRED_REPLICAS) == str(d["spec"]["replicas"]):
            return rs
        updated = copy.deepcopy(rs)
        updated["spec"]["replicas"] = replicas
        updated["metadata"]["annotations"][DESIRED_REPLICAS] = str(d["spec"]["replicas"])
        updated["metadata"]["annotations"][MAX_REPLICAS] = str(d["spec"]["replicas"] + self._surge(d))
        if old != replicas:
            updated["metadata"]["generation"] = rs["metadata"].get("generation", 1) + 1
            direction = "up" if replicas > old else "down"
            self._event(
                d,
                "Normal",
                "ScalingReplicaSet",
                f"Scaled {direction} replica set {rs['metadata']['name']} from {old} to {replicas}",
                "deployment-controller",
            )
        self._record("MODIFIED", "replicasets", updated)
        return updated

    def _surge(self, d: Mapping[str, Any]) -> int:
        strategy = d["spec"].get("strategy") or {}
        if strategy.get("type") == "Recreate":
            return 0
        ru = strategy.get("rollingUpdate") or {}
        return _percent_or_int(ru.get("maxSurge", "25%"), d["spec"]["replicas"], round_up=True)

    def _max_unavailable(self, d: Mapping[str, Any]) -> int:
        strategy = d["spec"].get("strategy") or {}
        if strategy.get("type") == "Recreate":
            return d["spec"]["replicas"]
        ru = strategy.get("rollingUpdate") or {}
        unavailable = _percent_or_int(ru.get("maxUnavailable", "25%"), d["spec"]["replicas"], round_up=False)
        if unavailable == 0 and self._surge(d) == 0:
            unavailable = 1  # the apiserver refuses 0/0; the controller treats it as 1
        return min(unavailable, d["spec"]["replicas"])

    def _find_or_create_rs(self, d: dict[str, Any], owned: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """The new ReplicaSet for the current template: (rs, created?); a reused one gets revision max+1."""
        template = d["spec"]["template"]
        max_revision = max((_revision(rs) for rs in owned), default=0)
        ns, dname = d["metadata"]["namespace"], d["metadata"]["name"]
        copied = {k: v for k, v in (d["metadata"].get("annotations") or {}).items() if k not in _SKIP_ANNOTATIONS}
        for rs in owned:
            if _without_hash(rs["spec"]["template"]) == _without_hash(template):
                if _revision(rs) == max_revision:
                    return rs, False
                updated = copy.deepcopy(rs)
                annotations = updated["metadata"].setdefault("annotations", {})
                old_revision = annotations.get(REVISION, "")
                history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h]
                if old_revision:
                    history.append(old_revision)
                annotations.update(copied)
                annotations[REVISION] = str(max_revision + 1)
                annotations[REVISION_HISTORY] = ",".join(history)
                self._record("MODIFIED", "replicasets", updated)
                return updated, False
        pod_hash = _template_hash(template)
        rs_template = copy.deepcopy(template)
        rs_template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
        meta = self._new_meta(ns, f"{dname}-{pod_hash}")
        meta["generation"] = 1
        meta["labels"] = copy.deepcopy(rs_template["metadata"]["labels"])
        meta["annotations"] = {
            **copied,
            DESIRED_REPLICAS: str(d["spec"]["replicas"]),
            MAX_REPLICAS: str(d["spec"]["replicas"] + self._surge(d)),
            REVISION: str(max_revision + 1),
        }
        meta["ownerReferences"] = [_owner_ref(d)]
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": meta,
            "spec": {"replicas": 0, "selector": selector, "template": rs_template},
            "status": {"replicas": 0},
        }
        dkey = f"{ns}/{dname}"
        for i, (kind, target) in enumerate(self._pending_failures):
            if target is None or target == dkey:
                self._rs_failure[meta["uid"]] = kind
                del self._pending_failures[i]
                break
        self._record("ADDED", "replicasets", rs)
        return self._objects["replicasets"][(ns, meta["name"])], True

    def _controller(self, d_in: dict[str, Any]) -> None:
        """One sync of the deployment controller for one Deployment."""
        d = copy.deepcopy(d_in)
        rollout = self._rollouts.setdefault(d["metadata"]["uid"], _Rollout())
        owned = self._owned_rs(d)
        desired = d["spec"]["replicas"]
        paused = bool(d["spec"].get("paused"))
        conditions = {c["type"]: c for c in (d.get("status") or {}).get("conditions") or []}
        now = _rfc3339(self.clock())
        new_rs: dict[str, Any] | None = None
        progressing: tuple[str, str, str] | None = None  # (status, reason, message) when it changes now

        template = _without_hash(d["spec"]["template"])
        match = next((rs for rs in owned if _without_hash(rs["spec"]["template"]) == template), None)
        if paused:
            new_rs = match
            progressing = ("Unknown", "DeploymentPaused", "Deployment is paused")
        else:
            newest = max((_revision(rs) for rs in owned), default=0)
            new_rs, created = self._find_or_create_rs(d, owned)
            if created:
                progressing = (
                    "True",
                    "NewReplicaSetCreated",
                    f'Created new replica set "{new_rs["metadata"]["name"]}"',
                )
                rollout.stuck_ticks = 0
            elif match is not None and _revision(match) != newest:
                progressing = ("True", "FoundNewReplicaSet", f'Found new replica set "{new_rs["metadata"]["name"]}"')
                rollout.stuck_ticks = 0
            elif conditions.get("Progressing", {}).get("reason") == "DeploymentPaused":
                progressing = ("Unknown", "DeploymentResumed", "Deployment is resumed")
            owned = self._owned_rs(d)
            new_rs = next(rs for rs in owned if rs["metadata"]["uid"] == new_rs["metadata"]["uid"])
            annotations = d["metadata"].setdefault("annotations", {})
            annotations[REVISION] = new_rs["metadata"]["annotations"][REVISION]
            self._roll(d, new_rs, [rs for rs in owned if rs is not new_rs])

        # Scale-only changes while paused still apply to the newest ReplicaSet.
        if paused and new_rs is not None and new_rs["spec"]["replicas"] != desired:
            others = sum(rs["spec"]["replicas"] for rs in owned if rs is not new_rs)
            if others == 0:
                self._set_rs_replicas(d, new_rs, desired)

        for rs in self._owned_rs(d):
            self._sync_rs(rs)
        owned = self._owned_rs(d)
        new_rs = next(
            (rs for rs in owned if new_rs is not None and rs["metadata"]["uid"] == new_rs["metadata"]["uid"]), None
        )

        counts = {rs["metadata"]["uid"]: self._rs_counts(rs) for rs in owned}
        total = sum(c[0] for c in counts.values())
        available = sum(c[1] for c in counts.values())
        updated_n = counts[new_rs["metadata"]["uid"]][0] if new_rs else 0
        updated_avail = counts[new_rs["metadata"]["uid"]][1] if new_rs else 0
        spec_total = sum(rs["spec"]["replicas"] for rs in owned)
        status: dict[str, Any] = {"observedGeneration": d["metadata"]["generation"]}
        for key, value in (
            ("replicas", total),
            ("updatedReplicas", updated_n),
            ("readyReplicas", available),
            ("availableReplicas", available),
            ("unavailableReplicas", max(spec_total - available, 0)),
        ):
            if value:
                status[key] = value

        if new_rs is not None and not paused:
            complete = updated_n == desired and total == updated_n and updated_avail == desired
            progress_key = (total, updated_n, updated_avail, available, tuple(rs["spec"]["replicas"] for rs in owned))
            if complete:
                progressing = (
                    "True",
                    "NewReplicaSetAvailable",
                    f'ReplicaSet "{new_rs["metadata"]["name"]}" has successfully progressed.',
                )
                rollout.stuck_ticks = 0
            elif progressing is None:
                if progress_key != rollout.last_progress:
                    rollout.stuck_ticks = 0
                    progressing = (
                        "True",
                        "ReplicaSetUpdated",
                        f'ReplicaSet "{new_rs["metadata"]["name"]}" is progressing.',
                    )
                else:
                    rollout.stuck_ticks += 1
                    if rollout.stuck_ticks >= self.deadline_ticks:
                        progressing = (
                            "False",
                            "ProgressDeadlineExceeded",
                            f'ReplicaSet "{new_rs["metadata"]["name"]}" has timed out progressing.',
                        )
            rollout.last_progress = progress_key
            if complete:
                self._cleanup_history(d, self._owned_rs(d), new_rs)

        if available >= desired - self._max_unavailable(d):
            avail_cond = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            avail_cond = ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        new_conditions = dict(conditions)
        _set_condition(new_conditions, "Available", avail_cond, now)
        if progressing is not None:
            _set_condition(new_conditions, "Progressing", progressing, now)
        status["conditions"] = [
            new_conditions[t] for t in ("Available", "Progressing", "ReplicaFailure") if t in new_conditions
        ]
        d["status"] = status
        if d != d_in:
            self._record("MODIFIED", "deployments", d)

    def _fresh(self, rs: Mapping[str, Any]) -> dict[str, Any]:
        return self._objects["replicasets"][(rs["metadata"]["namespace"], rs["metadata"]["name"])]

    def _roll(self, d: dict[str, Any], new_rs: dict[str, Any], old: list[dict[str, Any]]) -> None:
        """One rolling-update (or recreate) step, in the order of the real controller's rolloutRolling:
        scale the new ReplicaSet up within maxSurge, then old ones down within maxUnavailable."""
        desired = d["spec"]["replicas"]
        recreate = (d["spec"].get("strategy") or {}).get("type") == "Recreate"
        old_active = [rs for rs in old if rs["spec"]["replicas"] > 0]
        if recreate:
            for rs in old_active:
                self._set_rs_replicas(d, rs, 0)
            if not any(self._rs_pods(rs) for rs in old):
                self._set_rs_replicas(d, new_rs, desired)
            return
        if not old_active:
            # Nothing to replace: the new ReplicaSet simply follows spec.replicas (scaling).
            self._set_rs_replicas(d, new_rs, desired)
            return
        surge, unavailable = self._surge(d), self._max_unavailable(d)
        # reconcileNewReplicaSet
        total = sum(rs["spec"]["replicas"] for rs in self._owned_rs(d))
        room = min(desired + surge - total, desired - new_rs["spec"]["replicas"])
        if room > 0:
            new_rs = self._set_rs_replicas(d, new_rs, new_rs["spec"]["replicas"] + room)
        elif new_rs["spec"]["replicas"] > desired:
            new_rs = self._set_rs_replicas(d, new_rs, desired)
        # reconcileOldReplicaSets: first drop unhealthy old pods, then healthy ones while enough stay available.
        all_spec = sum(rs["spec"]["replicas"] for rs in self._owned_rs(d))
        min_available = desired - unavailable
        new_unavailable = new_rs["spec"]["replicas"] - self._rs_counts(new_rs)[1]
        budget = all_spec - min_available - new_unavailable
        if budget <= 0:
            return
        for rs in sorted(old_active, key=_revision):
            rs = self._fresh(rs)
            unhealthy = rs["spec"]["replicas"] - self._rs_counts(rs)[1]
            cut = min(budget, unhealthy)
            if cut > 0:
                self._set_rs_replicas(d, rs, rs["spec"]["replicas"] - cut)
                budget -= cut
            if budget <= 0:
                break
        available = sum(self._rs_counts(rs)[1] for rs in self._owned_rs(d))
        to_remove = available - min_available
        for rs in sorted(old_active, key=_revision):
            if to_remove <= 0:
                break
            rs = self._fresh(rs)
            cut = min(rs["spec"]["replicas"], to_remove)
            if cut > 0:
                self._set_rs_replicas(d, rs, rs["spec"]["replicas"] - cut)
                to_remove -= cut

    def _cleanup_history(self, d: Mapping[str, Any], owned: list[dict[str, Any]], new_rs: Mapping[str, Any]) -> None:
        limit = d["spec"].get("revisionHistoryLimit", 10)
        old = [rs for rs in owned if rs["metadata"]["uid"] != new_rs["metadata"]["uid"] and rs["spec"]["replicas"] == 0]
        excess = len(old) - limit
        for rs in sorted(old, key=_revision)[: max(excess, 0)]:
            if not self._rs_pods(rs):
                self._delete_rs(rs)


# ----------------------------------------------------------------------------------------------
# Object helpers
# ----------------------------------------------------------------------------------------------


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "") and "g=meta.k8s.io" in request.headers.get("Accept", "")


def _age(stamp: str | None, now: float) -> str:
    """duration.HumanDuration, roughly: 42s, 5m, 3h, 2d."""
    if not stamp:
        return "<unknown>"
    then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    seconds = max(int(now - then), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _pod_phase_text(pod: Mapping[str, Any]) -> str:
    """The STATUS column of `kubectl get pods`: a waiting/terminated reason when there is one, else the phase."""
    reason = pod["status"].get("phase", "Unknown")
    for cs in pod["status"].get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    return str(reason)


def _images(template_spec: Mapping[str, Any]) -> tuple[str, str]:
    containers = template_spec.get("containers") or []
    return ",".join(c["name"] for c in containers), ",".join(c.get("image", "") for c in containers)


_TABLE_COLUMNS: dict[str, list[tuple[str, str, int]]] = {
    "deployments": [
        ("Name", "string", 0),
        ("Ready", "string", 0),
        ("Up-to-date", "integer", 0),
        ("Available", "integer", 0),
        ("Age", "string", 0),
        ("Containers", "string", 1),
        ("Images", "string", 1),
        ("Selector", "string", 1),
    ],
    "replicasets": [
        ("Name", "string", 0),
        ("Desired", "integer", 0),
        ("Current", "integer", 0),
        ("Ready", "integer", 0),
        ("Age", "string", 0),
        ("Containers", "string", 1),
        ("Images", "string", 1),
        ("Selector", "string", 1),
    ],
    "pods": [
        ("Name", "string", 0),
        ("Ready", "string", 0),
        ("Status", "string", 0),
        ("Restarts", "string", 0),
        ("Age", "string", 0),
        ("IP", "string", 1),
        ("Node", "string", 1),
    ],
    "events": [
        ("Last Seen", "string", 0),
        ("Type", "string", 0),
        ("Reason", "string", 0),
        ("Object", "string", 0),
        ("Source", "string", 1),
        ("Message", "string", 0),
        ("First Seen", "string", 1),
        ("Count", "integer", 1),
        ("Name", "string", 1),
    ],
}
_TABLE_CELLS: dict[str, Callable[[Mapping[str, Any], float], list[Any]]] = {
    "deployments": lambda d, now: [
        d["metadata"]["name"],
        f"{d['status'].get('readyReplicas', 0)}/{d['spec']['replicas']}",
        d["status"].get("updatedReplicas", 0),
        d["status"].get("availableReplicas", 0),
        _age(d["metadata"].get("creationTimestamp"), now),
        *_images(d["spec"]["template"]["spec"]),
        selector_string(d["spec"]["selector"]),
    ],
    "replicasets": lambda rs, now: [
        rs["metadata"]["name"],
        rs["spec"]["replicas"],
        rs["status"].get("replicas", 0),
        rs["status"].get("readyReplicas", 0),
        _age(rs["metadata"].get("creationTimestamp"), now),
        *_images(rs["spec"]["template"]["spec"]),
        selector_string(rs["spec"]["selector"]),
    ],
    "pods": lambda p, now: [
        p["metadata"]["name"],
        f"{sum(1 for c in p['status'].get('containerStatuses') or [] if c.get('ready'))}"
        f"/{len(p['spec']['containers'])}",
        _pod_phase_text(p),
        str(sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or [])),
        _age(p["metadata"].get("creationTimestamp"), now),
        p["status"].get("podIP", "<none>"),
        p["spec"].get("nodeName", "<none>"),
    ],
    "events": lambda e, now: [
        _age(e.get("lastTimestamp"), now),
        e.get("type", ""),
        e.get("reason", ""),
        f"{e['involvedObject'].get('kind', '').lower()}/{e['involvedObject'].get('name', '')}",
        (e.get("source") or {}).get("component", ""),
        e.get("message", ""),
        _age(e.get("firstTimestamp"), now),
        e.get("count", 1),
        e["metadata"]["name"],
    ],
}


def _drop_nulls(value: Any) -> Any:
    """What decoding into Go structs and encoding back does to nulls (e.g. the template's
    ``"creationTimestamp": null`` that kubectl sends): they disappear."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _owner_ref(owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref["uid"])
    return None


def _revision(rs: Mapping[str, Any]) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _set_condition(conditions: dict[str, dict[str, Any]], ctype: str, value: tuple[str, str, str], now: str) -> None:
    status, reason, message = value
    old = conditions.get(ctype)
    if old and (old["status"], old.get("reason"), old.get("message")) == value:
        return
    transition = old["lastTransitionTime"] if old and old["status"] == status else now
    conditions[ctype] = {
        "type": ctype,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }
