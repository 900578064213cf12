"""Kubernetes Deployments through the official `kubernetes` client: the `DeployTarget` port.

The client (37.x) is synchronous (urllib3) with pydantic models that validate every answer strictly,
so every call runs on the shared `BlockingPool` with a time limit, and the request itself carries the
same limit (`_request_timeout`) so a stuck socket frees its thread. One `ApiClient` per kubeconfig
context, made on first use; a target names its context (`TargetSpec.context`) or gets the default.

A rollout is followed the way `kubectl rollout status` decides (`rollout_state`, a transcription of
kubectl's DeploymentStatusViewer): done when the controller has observed the new generation and every
replica is updated and available, failed only when the controller reports ProgressDeadlineExceeded.
The deadline of `TargetSpec.timeout_s` is ours: past it the result is a failure that says where the
rollout stood. Polling (every `poll_interval` seconds) rather than a watch keeps each call short and
bounded; while a rollout waits, the warning events of the new ReplicaSet and of its pods that are not
ready (image pulls, crash loops, failed probes) are read and passed on with each progress report.

`rollback(to_version=None)` does what `kubectl rollout undo` does: the template of an earlier
ReplicaSet revision (without its pod-template-hash label) goes back into the Deployment in one JSON
patch, with the annotations kubectl carries over; the controller then reuses that ReplicaSet. The
revision picked is the newest one whose template differs from the Deployment's current template,
which is kubectl's "second-highest revision" once the controller has observed the spec, and still
the running version when it has not.

Every failure leaves as an `AdapterError` naming Kubernetes, the deployment (`namespace/name`) and
the server's Status message: unreachable -> `AdapterUnavailable`, no answer in time ->
`AdapterTimeout`, 404 -> `AdapterNotFound`, an answer the client's models reject -> `AdapterError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException, OpenApiException
from kubernetes.config.config_exception import ConfigException

from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    DeployProgress,
    DeployResult,
    PodInfo,
    ProgressFn,
    TargetSpec,
    WorkloadStatus,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
_CONNECT_S = 30.0  # making a client: reading the kubeconfig, importing the client's API modules

TOOL = "Kubernetes"
FIELD_MANAGER = "opsloop"
REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
CHANGE_CAUSE = "kubernetes.io/change-cause"  # shown by `kubectl rollout history`
# Deployment annotations `kubectl rollout undo` keeps instead of taking the ReplicaSet's (rollback.go).
UNDO_SKIPPED_ANNOTATIONS = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    }
)
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Fa-f0-9]{32,}")
_MAX_EVENTS = 5  # warnings per progress report: the newest ones
_MAX_EVENT_PODS = 5  # pods whose events are read per poll (a big rollout has many alike)
# While following a rollout, an unreachable or slow API server is given this long (and at least this
# many polls) before we give up: an apiserver restart should not turn into a failed deploy.
_MAX_POLL_FAILURES = 3
OUTAGE_GRACE_S = 60.0


# --------------------------------------------------------------------------------------------------
# Pure helpers (no I/O): image references and kubectl's rollout decision
# --------------------------------------------------------------------------------------------------


def image_version(image: str | None) -> str | None:
    """The version an image reference names: its digest when pinned, else its tag (`latest` when none)."""
    if not image:
        return None
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def image_repository(image: str) -> str:
    """`registry:5000/team/web:1.2@sha256:..` -> `registry:5000/team/web`."""
    image = image.split("@", 1)[0]
    head, _, last = image.rpartition("/")
    name = last.split(":", 1)[0]
    return f"{head}/{name}" if head else name


def image_matches(image: str | None, version: str) -> bool:
    """Whether `image` runs `version` (a tag, a digest, or a full reference)."""
    if not image:
        return False
    if image == version:
        return True
    tag_part = image.split("@", 1)[0]
    last = tag_part.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    digest = image.split("@", 1)[1] if "@" in image else None
    return version in (tag, digest)


def image_for(repository: str, version: str) -> str:
    """The reference for `version` in `repository`: `repo@sha256:..` for a digest, `repo:tag` otherwise."""
    if _DIGEST.fullmatch(version):
        return f"{repository}@{version}"
    if not _TAG.fullmatch(version):
        raise AdapterError(TOOL, f"`{version}` is neither an image tag nor a digest")
    return f"{repository}:{version}"


def rollout_state(d: client.V1Deployment) -> tuple[str, str]:
    """('done' | 'waiting' | 'failed', message), checked in the order of kubectl's DeploymentStatusViewer.

    Missing status numbers count as 0 (the apiserver leaves zeros out).
    """
    st = d.status or client.V1DeploymentStatus()
    name = d.metadata.name if d.metadata else "?"
    generation = (d.metadata.generation if d.metadata else None) or 0
    if generation > (st.observed_generation or 0):
        return "waiting", "Waiting for deployment spec update to be observed..."
    for c in st.conditions or []:
        if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded":
            return "failed", f'deployment "{name}" exceeded its progress deadline'
    upd, rep, avail = st.updated_replicas or 0, st.replicas or 0, st.available_replicas or 0
    desired = d.spec.replicas
    waiting = f'Waiting for deployment "{name}" rollout to finish'
    if desired is not None and upd < desired:
        return "waiting", f"{waiting}: {upd} out of {desired} new replicas have been updated..."
    if rep > upd:
        return "waiting", f"{waiting}: {rep - upd} old replicas are pending termination..."
    if avail < upd:
        return "waiting", f"{waiting}: {avail} of {upd} updated replicas are available..."
    return "done", f'deployment "{name}" successfully rolled out'


def selector_string(selector: client.V1LabelSelector | None) -> str:
    """A LabelSelector as the `labelSelector` query text (metav1.LabelSelectorAsSelector)."""
    if selector is None:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for e in selector.match_expressions or []:
        values = ",".join(e.values or [])
        op = e.operator
        if op == "In":
            parts.append(f"{e.key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{e.key} notin ({values})")
        elif op == "Exists":
            parts.append(e.key)
        else:
            parts.append(f"!{e.key}")
    return ",".join(parts)


def _revision(obj: client.V1ReplicaSet | client.V1Deployment) -> int:
    try:
        return int(((obj.metadata and obj.metadata.annotations) or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _controlled_by(obj: client.V1ReplicaSet, uid: str | None) -> bool:
    refs = (obj.metadata.owner_references if obj.metadata else None) or []
    return any(r.controller and r.uid == uid for r in refs)


def _pod_status_text(pod: client.V1Pod) -> str:
    """The STATUS column of `kubectl get pods`, roughly: a container's waiting/terminated reason, else the phase."""
    if pod.metadata and pod.metadata.deletion_timestamp:
        return "Terminating"
    st = pod.status or client.V1PodStatus()
    text = st.reason or st.phase or "Unknown"
    for cs in st.container_statuses or []:
        state = cs.state
        if state and state.waiting and state.waiting.reason:
            text = state.waiting.reason
        elif state and state.terminated and state.terminated.reason:
            text = state.terminated.reason
    return text


def _pod_ready(pod: client.V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _status_message(exc: ApiException) -> str:
    """The `message` of the metav1.Status in an error answer (else the HTTP reason)."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or "no message")


def _validation_reason(exc: pydantic.ValidationError) -> str:
    """`spec.replicas: Input should be a valid integer` (the first problem, and how many more)."""
    errors = exc.errors()
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or exc.title
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Conn:
    """One kubeconfig context: its client and what it defaults to."""

    api: client.ApiClient
    apps: client.AppsV1Api
    core: client.CoreV1Api
    context: str
    namespace: str
    host: str


@dataclass(frozen=True)
class _Target:
    """A Deployment to act on, resolved from a TargetSpec."""

    context: str | None
    namespace: str
    name: str
    container: str | None

    @property
    def subject(self) -> str:
        return f"deployment `{self.namespace}/{self.name}`"


class KubernetesTarget:
    """Deployments in one or more clusters (kubeconfig contexts, or the pod's own service account)."""

    name = "kubernetes"
    resumable = True
    operates = True
    revisions = True

    def __init__(
        self,
        *,
        pool: BlockingPool,
        kubeconfig: str | None = None,
        context: str | None = None,
        in_cluster: bool = False,
        timeout: float = 10.0,
        poll_interval: float = 2.0,
        outage_grace: float = OUTAGE_GRACE_S,
    ) -> None:
        self._pool = pool
        self._kubeconfig = kubeconfig
        self._context = context
        self._in_cluster = in_cluster
        self._timeout = timeout
        self.poll_interval = poll_interval
        self.outage_grace = outage_grace
        self._conns: dict[str | None, _Conn] = {}
        self._conns_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    def _connect(self, context: str | None) -> _Conn:
        """The client for `context` (None: the configured default), made on first use. Runs on the pool."""
        with self._conns_lock:
            conn = self._conns.get(context)
            if conn is not None:
                return conn
            cfg = client.Configuration()
            if self._in_cluster:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                name = "in-cluster"
                try:
                    namespace = _SA_NAMESPACE.read_text().strip() or "default"
                except OSError:
                    namespace = "default"
            else:
                contexts, active = config.list_kube_config_contexts(config_file=self._kubeconfig)  # type: ignore[no-untyped-call]
                chosen = active if context is None else next((c for c in contexts if c.get("name") == context), None)
                if not chosen:
                    known = ", ".join(sorted(str(c.get("name")) for c in contexts)) or "none"
                    raise ConfigException(f"no context `{context}` in the kubeconfig (contexts: {known})")
                name = str(chosen["name"])
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=self._kubeconfig, context=name, client_configuration=cfg, persist_config=False
                )
                namespace = str((chosen.get("context") or {}).get("namespace") or "default")
            # urllib3 retries a failed connection once; the follow loop and the pool's limit do the rest.
            cfg.retries = 1
            api = client.ApiClient(cfg)
            conn = _Conn(api, client.AppsV1Api(api), client.CoreV1Api(api), name, namespace, str(cfg.host))
            self._conns[context] = conn
            return conn

    async def warm(self) -> None:
        """Load the kubeconfig and the client's API modules now, on the pool, so the first deploy check
        does not spend its timeout importing them (seconds on a busy machine). Failures are left for
        the first real call to report, with its context."""
        try:
            await self._pool.run(self.name, self._connect, None, timeout=max(self._timeout, _CONNECT_S))
        except Exception as err:  # the first real call reports it, with its context
            log.debug("kubernetes: warming the client failed: %s", err)

    async def _call(self, context: str | None, about: str, action: str, fn: Callable[[_Conn], T]) -> T:
        """Run `fn(conn)` on the pool; every failure becomes an AdapterError about `about`.

        The client of a context is made first, outside the call's timeout: making it imports the API
        modules (seconds on a busy machine), which is not the API server being slow."""

        def work() -> T:
            return fn(self._connect(context))

        if context not in self._conns:
            try:
                await self._pool.run(TOOL, self._connect, context, timeout=max(self._timeout, _CONNECT_S))
            except AdapterError:
                raise
            except Exception as exc:
                raise self._error(exc, about, action, context) from exc
        try:
            return await self._pool.run(TOOL, work, timeout=self._timeout)
        except AdapterTimeout:
            raise AdapterTimeout(TOOL, f"no answer within {self._timeout:g} s while {action} {about}") from None
        except AdapterError:
            raise
        except Exception as exc:
            raise self._error(exc, about, action, context) from exc

    def _error(self, exc: BaseException, about: str, action: str, context: str | None) -> AdapterError:
        """Map client, urllib3, pydantic and kubeconfig failures to the AdapterError family."""
        where = self._where(context)
        if isinstance(exc, ApiException):
            status, message = exc.status or 0, _status_message(exc)
            if status == 404:
                return AdapterNotFound(TOOL, f"no {about} ({message})")
            if status == 401:
                return AdapterError(TOOL, f"{where} rejected our credentials while {action} {about} ({message})")
            if status == 403:
                return AdapterError(TOOL, f"not allowed: {action} {about} ({message})")
            if status in (429, 502, 503, 504):
                return AdapterUnavailable(TOOL, f"{where} answered {status} while {action} {about} ({message})")
            return AdapterError(TOOL, f"{action} {about} failed: {status} {exc.reason or ''}".rstrip() + f": {message}")
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            exc = exc.reason
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            # Checked first: urllib3 2 makes it a ConnectTimeoutError, though "connection refused" is no timeout.
            return AdapterUnavailable(TOOL, f"cannot reach {where} while {action} {about} ({_short(exc)})")
        if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
            return AdapterTimeout(TOOL, f"no answer from {where} within {self._timeout:g} s while {action} {about}")
        if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | OSError):
            return AdapterUnavailable(TOOL, f"cannot reach {where} while {action} {about} ({_short(exc)})")
        if isinstance(exc, pydantic.ValidationError):
            return AdapterError(TOOL, f"unexpected answer while {action} {about}: {_validation_reason(exc)}")
        if isinstance(exc, ConfigException):
            source = (
                "the in-cluster service account"
                if self._in_cluster
                else f"kubeconfig {self._kubeconfig or '(default)'}"
            )
            return AdapterError(TOOL, f"cannot use {source}: {exc}")
        if isinstance(exc, OpenApiException | ValueError):
            return AdapterError(TOOL, f"{action} {about} failed: {_short(exc)}")
        return AdapterError(TOOL, f"{action} {about} failed: {type(exc).__name__}: {_short(exc)}")

    def _where(self, context: str | None) -> str:
        conn = self._conns.get(context)
        if conn is not None:
            return f"the API server at {conn.host}"
        return "the API server" + (f" of context `{context}`" if context else "")

    def close(self) -> None:
        """Close every client's connections (call once no more calls are running)."""
        with self._conns_lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.api.close()  # type: ignore[no-untyped-call]

    async def _target(self, spec: TargetSpec) -> _Target:
        """Namespace, name and container of a spec; the namespace defaults to the context's."""
        context = spec.context or self._context
        namespace = spec.namespace
        if namespace is None:
            conn = await self._call(context, f"service `{spec.service}`", "loading the context of", lambda c: c)
            namespace = conn.namespace
        return _Target(context, namespace, spec.deployment or spec.service, spec.container)

    async def _read(self, t: _Target, action: str = "reading") -> client.V1Deployment:
        return await self._call(
            t.context,
            t.subject,
            action,
            lambda c: c.apps.read_namespaced_deployment(t.name, t.namespace, _request_timeout=self._timeout),
        )

    async def _patch(self, t: _Target, body: Any, action: str) -> client.V1Deployment:
        """A dict body goes as a strategic merge patch, a list as a JSON patch (the client picks by type)."""
        log.info("kubernetes: %s %s/%s", action, t.namespace, t.name)
        try:
            return await self._call(
                t.context,
                t.subject,
                action,
                lambda c: c.apps.patch_namespaced_deployment(
                    t.name, t.namespace, body, field_manager=FIELD_MANAGER, _request_timeout=self._timeout
                ),
            )
        except AdapterTimeout as exc:
            # The PATCH may have reached the server even though its answer did not reach us.
            raise AdapterTimeout(
                TOOL, f"{str(exc).removeprefix(f'{TOOL}: ')}; the change may have been applied"
            ) from None

    def _container(self, t: _Target, d: client.V1Deployment) -> client.V1Container:
        """The container a spec means: the named one, else the one named like the deployment, else the only one."""
        containers = d.spec.template.spec.containers if d.spec.template.spec else []
        names = ", ".join(f"`{c.name}`" for c in containers)
        if t.container:
            found = next((c for c in containers if c.name == t.container), None)
            if found is None:
                raise AdapterNotFound(TOOL, f"{t.subject} has no container `{t.container}` (it has {names})")
            return found
        by_name = next((c for c in containers if c.name == t.name), None)
        if by_name is not None:
            return by_name
        if len(containers) == 1:
            return containers[0]
        raise AdapterError(TOOL, f"{t.subject} has several containers ({names}): name one in the deploy config")

    # ------------------------------------------------------------------ following a rollout

    async def _follow(self, t: _Target, progress: ProgressFn, deadline_s: float, what: str) -> DeployResult:
        """Report the rollout until kubectl would call it done or failed, or until our deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        last: DeployProgress | None = None
        failures, outage_since = 0, 0.0
        while True:
            try:
                d = await self._read(t, "following the rollout of")
            except (AdapterUnavailable, AdapterTimeout) as exc:
                # A lost poll is no failed rollout: keep trying for a while, within our deadline.
                failures += 1
                now = loop.time()
                outage_since = outage_since if failures > 1 else now
                if (failures >= _MAX_POLL_FAILURES and now - outage_since >= self.outage_grace) or now >= deadline:
                    raise
                log.warning("kubernetes: %s (retrying)", exc)
                await asyncio.sleep(min(self.poll_interval, max(deadline - now, 0)))
                continue
            failures = 0
            state, message = rollout_state(d)
            events: tuple[str, ...] = ()
            if state != "done":
                events = await self._warnings(t, d)
            st = d.status or client.V1DeploymentStatus()
            observed = (st.observed_generation or 0) >= ((d.metadata.generation if d.metadata else None) or 0)
            snapshot = DeployProgress(
                message=message,
                desired=d.spec.replicas,
                # Before the controller has seen the new spec, "updated" still counts the old template.
                updated=(st.updated_replicas or 0) if observed else None,
                available=st.available_replicas or 0,
                events=events,
            )
            if snapshot != last:
                await progress(snapshot)
                last = snapshot
            revision = str(_revision(d)) if _revision(d) else None
            if state == "done":
                return DeployResult(ok=True, message=message, revision=revision)
            if state == "failed":
                return DeployResult(ok=False, message=_with_events(message, events), revision=revision)
            remaining = deadline - loop.time()
            if remaining <= 0:
                text = f"{what} of {t.subject} did not finish within {deadline_s:g} s: {message}"
                return DeployResult(ok=False, message=_with_events(text, events), revision=revision)
            await asyncio.sleep(min(self.poll_interval, remaining))

    async def _warnings(self, t: _Target, d: client.V1Deployment) -> tuple[str, ...]:
        """Warnings about the new ReplicaSet and its pods that are not ready: `Reason: message`, newest last.

        Best effort: events help explain a stuck rollout but never decide it, so a failure to read
        them (RBAC without `events`, a slow server) yields none.
        """
        uid = d.metadata.uid if d.metadata else None
        revision = _revision(d)
        selector = selector_string(d.spec.selector)

        def collect(c: _Conn) -> tuple[str, ...]:
            rs_list = c.apps.list_namespaced_replica_set(
                t.namespace, label_selector=selector, _request_timeout=self._timeout
            )
            new_rs = next((rs for rs in rs_list.items if _controlled_by(rs, uid) and _revision(rs) == revision), None)
            if new_rs is None or new_rs.metadata is None or new_rs.spec is None:
                return ()
            pods = c.core.list_namespaced_pod(
                t.namespace, label_selector=selector_string(new_rs.spec.selector), _request_timeout=self._timeout
            ).items
            involved = [("ReplicaSet", new_rs.metadata.name)]
            involved += [("Pod", p.metadata.name) for p in pods if p.metadata and not _pod_ready(p)][:_MAX_EVENT_PODS]
            found: list[tuple[datetime, str]] = []
            for kind, name in involved:
                events = c.core.list_namespaced_event(
                    t.namespace,
                    field_selector=f"involvedObject.kind={kind},involvedObject.name={name}",
                    _request_timeout=self._timeout,
                ).items
                for e in events:
                    # The kubelet files "Back-off pulling image" as Normal; it matters as much as the Warnings.
                    if e.type == "Warning" or e.reason == "BackOff":
                        when = e.last_timestamp or e.event_time or e.first_timestamp or datetime.min.replace(tzinfo=UTC)
                        found.append((when, f"{e.reason}: {e.message}".strip()))
            found.sort(key=lambda x: x[0])
            unique: list[str] = []
            for _, text in found:
                if text in unique:
                    unique.remove(text)
                unique.append(text)
            return tuple(unique[-_MAX_EVENTS:])

        try:
            return await self._call(t.context, t.subject, "reading the events of", collect)
        except AdapterError as exc:
            log.info("kubernetes: no events for %s/%s: %s", t.namespace, t.name, exc)
            return ()

    # ------------------------------------------------------------------ DeployTarget

    async def running_version(self, spec: TargetSpec) -> str | None:
        """The tag (or digest) of the container's image in the Deployment's template."""
        t = await self._target(spec)
        d = await self._read(t)
        return image_version(self._container(t, d).image)

    async def deploy(self, spec: TargetSpec, version: str, image: str | None, progress: ProgressFn) -> DeployResult:
        """Set the container's image (strategic merge by container name) and follow the rollout."""
        return await self._set_image(spec, version, image, progress, what="rollout", cause=f"opsloop: deploy {version}")

    async def _set_image(
        self, spec: TargetSpec, version: str, image: str | None, progress: ProgressFn, *, what: str, cause: str
    ) -> DeployResult:
        t = await self._target(spec)
        d = await self._read(t)
        if d.spec.paused:
            raise AdapterError(TOOL, f"{t.subject} is paused: resume it (kubectl rollout resume) first")
        container = self._container(t, d)
        current = container.image or ""
        if image is None:
            repository = spec.image or (image_repository(current) if current else None)
            if not repository:
                raise AdapterError(TOOL, f"no image repository for {t.subject}: set `image` in the deploy config")
            image = image_for(repository, version)
        if image != current:
            body = {
                "metadata": {"annotations": {CHANGE_CAUSE: cause}},
                "spec": {"template": {"spec": {"containers": [{"name": container.name, "image": image}]}}},
            }
            await self._patch(t, body, f"setting image {image} on")
        return await self._follow(t, progress, spec.timeout_s, what)

    async def resume(self, spec: TargetSpec, version: str, progress: ProgressFn) -> DeployResult:
        """Follow the rollout of `version` that a previous run started (nothing is patched)."""
        t = await self._target(spec)
        d = await self._read(t)
        image = self._container(t, d).image
        if not image_matches(image, version):
            return DeployResult(
                ok=False,
                message=f"{t.subject} is at {image_version(image)}, not {version}: "
                "that rollout never started or was replaced",
                revision=str(_revision(d)) if _revision(d) else None,
            )
        return await self._follow(t, progress, spec.timeout_s, "rollout")

    async def rollback(
        self, spec: TargetSpec, to_version: str | None, image: str | None, progress: ProgressFn
    ) -> DeployResult:
        """Back to `to_version` (an image patch), or to the previous revision as `kubectl rollout undo` does."""
        if to_version is not None:
            return await self._set_image(
                spec, to_version, image, progress, what="rollback", cause=f"opsloop: rollback to {to_version}"
            )
        t = await self._target(spec)
        d = await self._read(t)
        if d.spec.paused:
            raise AdapterError(TOOL, f"cannot roll back {t.subject} while it is paused; resume it first")
        uid = d.metadata.uid if d.metadata else None
        selector = selector_string(d.spec.selector)

        def plan(c: _Conn) -> tuple[int, list[dict[str, Any]]]:
            """The revision to go back to and the JSON patch that does it (kubectl's rollback.go)."""
            rs_list = c.apps.list_namespaced_replica_set(
                t.namespace, label_selector=selector, _request_timeout=self._timeout
            )
            sanitize: Callable[[Any], Any] = c.api.sanitize_for_serialization  # models -> camelCase dicts
            current = _without_hash(sanitize(d.spec.template))
            owned = [rs for rs in rs_list.items if _controlled_by(rs, uid) and rs.spec and rs.spec.template]
            owned.sort(key=_revision, reverse=True)
            target = next((rs for rs in owned if _without_hash(sanitize(rs.spec.template)) != current), None)
            if target is None or target.spec is None:
                raise AdapterError(TOOL, f"no earlier revision of {t.subject} to roll back to")
            annotations = {
                k: v
                for k, v in ((d.metadata and d.metadata.annotations) or {}).items()
                if k in UNDO_SKIPPED_ANNOTATIONS
            }
            rs_annotations = (target.metadata.annotations if target.metadata else None) or {}
            annotations.update({k: v for k, v in rs_annotations.items() if k not in UNDO_SKIPPED_ANNOTATIONS})
            return _revision(target), [
                {"op": "replace", "path": "/spec/template", "value": _without_hash(sanitize(target.spec.template))},
                {"op": "replace", "path": "/metadata/annotations", "value": annotations},
            ]

        revision, body = await self._call(t.context, t.subject, "listing the revisions of", plan)
        await self._patch(t, body, f"rolling back to revision {revision}")
        return await self._follow(t, progress, spec.timeout_s, "rollback")

    async def status(self, spec: TargetSpec) -> WorkloadStatus:
        """The template's image, the replica counts and every pod of the Deployment."""
        t = await self._target(spec)
        d = await self._read(t)
        container = self._container(t, d)
        selector = selector_string(d.spec.selector)
        pod_list = await self._call(
            t.context,
            t.subject,
            "listing the pods of",
            lambda c: c.core.list_namespaced_pod(t.namespace, label_selector=selector, _request_timeout=self._timeout),
        )
        pods = []
        for p in sorted(pod_list.items, key=lambda p: p.metadata.name if p.metadata and p.metadata.name else ""):
            spec_containers = p.spec.containers if p.spec else []
            pod_image = next((c.image for c in spec_containers if c.name == container.name), None)
            statuses = (p.status.container_statuses if p.status else None) or []
            pods.append(
                PodInfo(
                    name=(p.metadata.name if p.metadata else None) or "?",
                    ready=_pod_ready(p),
                    status=_pod_status_text(p),
                    restarts=sum(cs.restart_count for cs in statuses),
                    version=image_version(pod_image),
                )
            )
        st = d.status or client.V1DeploymentStatus()
        return WorkloadStatus(
            version=image_version(container.image),
            image=container.image,
            desired=d.spec.replicas or 0,
            ready=st.ready_replicas or 0,
            available=st.available_replicas or 0,
            pods=tuple(pods),
            message=rollout_state(d)[1],
        )

    async def scale(self, spec: TargetSpec, replicas: int) -> None:
        """Set the replica count through the scale subresource (no new revision)."""
        if replicas < 0:
            raise AdapterError(TOOL, f"cannot scale to {replicas} replicas")
        t = await self._target(spec)
        log.info("kubernetes: scaling %s/%s to %d", t.namespace, t.name, replicas)
        await self._call(
            t.context,
            t.subject,
            f"scaling to {replicas}",
            lambda c: c.apps.patch_namespaced_deployment_scale(
                t.name,
                t.namespace,
                {"spec": {"replicas": replicas}},
                field_manager=FIELD_MANAGER,
                _request_timeout=self._timeout,
            ),
        )

    async def restart(self, spec: TargetSpec, progress: ProgressFn) -> DeployResult:
        """`kubectl rollout restart`: a new restartedAt annotation on the template, then follow the rollout."""
        t = await self._target(spec)
        d = await self._read(t)
        if d.spec.paused:
            raise AdapterError(TOOL, f"can't restart paused {t.subject} (run rollout resume first)")
        now = datetime.now(UTC)
        stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
        template_meta = d.spec.template.metadata
        if ((template_meta.annotations if template_meta else None) or {}).get(RESTARTED_AT) == stamp:
            # kubectl refuses a second restart within the same second (an empty patch); we make it differ.
            stamp = now.isoformat(timespec="microseconds").replace("+00:00", "Z")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        await self._patch(t, body, "restarting")
        return await self._follow(t, progress, spec.timeout_s, "restart")

    async def check(self) -> str:
        """`Kubernetes v1.30.4 at https://10.0.0.1:6443, context prod`."""

        def probe(c: _Conn) -> tuple[str, _Conn]:
            info = client.VersionApi(c.api).get_code(_request_timeout=self._timeout)
            return str(info.git_version), c

        version, conn = await self._call(self._context, "the server version", "reading", probe)
        return f"Kubernetes {version} at {conn.host}, context {conn.context}"


def _without_hash(template: Any) -> dict[str, Any]:
    """A sanitized (camelCase dict) pod template without the pod-template-hash label."""
    out: dict[str, Any] = json.loads(json.dumps(template or {}))
    labels = (out.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return out


def _with_events(message: str, events: tuple[str, ...]) -> str:
    return f"{message} ({'; '.join(events)})" if events else message


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if text and "Failed to establish a new connection: " in text[0]:
        # "HTTPConnection(host=..., port=...): Failed to establish a new connection: [Errno 111] Connection refused"
        return text[0].split("Failed to establish a new connection: ", 1)[1]
    return text[0][:300] if text else type(exc).__name__


__all__ = [
    "KubernetesTarget",
    "image_for",
    "image_matches",
    "image_repository",
    "image_version",
    "rollout_state",
    "selector_string",
]
