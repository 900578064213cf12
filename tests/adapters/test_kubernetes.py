"""Contract tests: the real `kubernetes` client (37.x), through `KubernetesTarget`, against the emulator.

The emulator ticks on its own every few milliseconds (its deployment controller and kubelet), and the
adapter polls as often, so rollouts take a fraction of a second; a rollout told to fail reaches its
progress deadline after `deadline_ticks` ticks without progress. Nothing asserts on durations.

The last part runs the real `kubectl` against the emulator (`rollout status`, `rollout undo`,
`scale`, `get`) so the emulator stays honest. kubectl sends a bearer token only over TLS, so those
tests run the emulator with its fixed test certificate. They skip without a kubectl binary unless
OPSLOOP_REQUIRE_SERVERS=1 (Debian: `apt-get install kubernetes-client`; `KUBECTL=/path` picks one).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from adapters.kubernetes import KubernetesTarget, image_matches, image_version, rollout_state
from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    DeployProgress,
    DeployTarget,
    TargetSpec,
    Warmable,
)
from tests.conftest import require_servers
from tests.emulators.kubernetes import TEST_CERT, KubernetesEmulator
from tests.support import wait_until

NS = "prod"
REPO = "registry.example/team/web"
GOOD = f"{REPO}:1.2.3"
DIGEST = "sha256:" + "ab" * 32


class Progress:
    """A ProgressFn that keeps every snapshot."""

    def __init__(self) -> None:
        self.seen: list[DeployProgress] = []

    async def __call__(self, p: DeployProgress) -> None:
        self.seen.append(p)

    @property
    def events(self) -> list[str]:
        return [e for p in self.seen for e in p.events]


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[KubernetesEmulator]:
    async with KubernetesEmulator(tick_interval=0.01, deadline_ticks=8) as e:
        e.add_deployment(NS, "web", GOOD, replicas=3)
        yield e
        assert e.server_errors == [], e.server_errors


@pytest.fixture
def kubeconfig(emu: KubernetesEmulator, tmp_path: Path) -> Path:
    return emu.kubeconfig(
        tmp_path / "kubeconfig", context="emulator", namespace=NS, extra_contexts={"staging": "stage"}
    )


@pytest.fixture
def pool() -> Iterator[BlockingPool]:
    p = BlockingPool(workers=4)
    yield p
    p.close()


def make_target(pool: BlockingPool, kubeconfig: Path, *, timeout: float = 5.0) -> KubernetesTarget:
    return KubernetesTarget(pool=pool, kubeconfig=str(kubeconfig), timeout=timeout, poll_interval=0.01)


@pytest.fixture
def target(pool: BlockingPool, kubeconfig: Path) -> Iterator[KubernetesTarget]:
    t = make_target(pool, kubeconfig)
    yield t
    t.close()


@pytest.fixture
def spec() -> TargetSpec:
    return TargetSpec(
        service="web",
        env="prod",
        kind="kubernetes",
        namespace=NS,
        deployment="web",
        container="web",
        image=REPO,
        timeout_s=30.0,
    )


# --- the port -------------------------------------------------------------------------------------


def test_implements_the_port(target: KubernetesTarget) -> None:
    port: DeployTarget = target
    assert port.name == "kubernetes"
    assert port.resumable is True


def test_image_versions() -> None:
    assert image_version("registry:5000/team/web:1.2.3") == "1.2.3"
    assert image_version("registry:5000/team/web") == "latest"
    assert image_version(f"registry:5000/team/web:1.2.3@{DIGEST}") == DIGEST
    assert image_matches(f"{REPO}:1.2.3@{DIGEST}", "1.2.3")
    assert image_matches(f"{REPO}@{DIGEST}", DIGEST)
    assert not image_matches(f"{REPO}:1.2.3", "1.2")


async def test_running_version_and_check(target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator) -> None:
    assert await target.running_version(spec) == "1.2.3"
    assert await target.check() == f"Kubernetes v1.30.4 at {emu.url}, context emulator"
    sent = emu.requests_to("/deployments/web", "GET")[-1]
    assert sent.headers["Authorization"] == f"Bearer {emu.token}"


# --- deploy ---------------------------------------------------------------------------------------


async def test_deploy_rolls_out_and_reports_progress(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    progress = Progress()
    result = await target.deploy(spec, "1.2.4", None, progress)

    assert result.ok, result
    assert result.message == 'deployment "web" successfully rolled out'
    assert result.revision == "2"
    assert emu.image(NS, "web") == f"{REPO}:1.2.4"
    # The image went in as kubectl set image does it: a strategic merge patch by container name.
    patch = emu.requests_to("/deployments/web", "PATCH")[-1]
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.query["fieldManager"] == "opsloop"
    assert patch.body["spec"]["template"]["spec"]["containers"] == [{"name": "web", "image": f"{REPO}:1.2.4"}]
    # Progress: waiting snapshots first, each one different from the one before, the rollout done last.
    assert len(progress.seen) >= 2
    assert all(a != b for a, b in zip(progress.seen, progress.seen[1:], strict=False))
    assert any("Waiting for" in p.message for p in progress.seen[:-1])
    assert (progress.seen[-1].desired, progress.seen[-1].updated, progress.seen[-1].available) == (3, 3, 3)
    updated = [p.updated for p in progress.seen if p.updated is not None]
    assert updated == sorted(updated)
    assert progress.events == []
    # rollout history shows who did it
    rs = max(
        emu.replica_sets(NS, "web"),
        key=lambda r: int(r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]),
    )
    assert rs["metadata"]["annotations"]["kubernetes.io/change-cause"] == "opsloop: deploy 1.2.4"
    assert await target.running_version(spec) == "1.2.4"


async def test_deploy_a_digest_and_a_given_reference(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    assert (await target.deploy(spec, DIGEST, None, Progress())).ok
    assert emu.image(NS, "web") == f"{REPO}@{DIGEST}"
    assert await target.running_version(spec) == DIGEST

    pinned = f"{REPO}:1.3.0@{DIGEST}"
    assert (await target.deploy(spec, "1.3.0", pinned, Progress())).ok
    assert emu.image(NS, "web") == pinned


async def test_deploy_of_the_running_version_patches_nothing(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    result = await target.deploy(spec, "1.2.3", None, Progress())
    assert result.ok and result.revision == "1"
    assert emu.requests_to("/deployments/web", "PATCH") == []


async def test_image_pull_failure_is_reported_with_the_events(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    emu.fail_next_rollout("image_pull")
    progress = Progress()
    result = await target.deploy(spec, "9.9.9", None, progress)

    assert not result.ok
    assert result.message.startswith('deployment "web" exceeded its progress deadline')
    assert f'Back-off pulling image "{REPO}:9.9.9"' in result.message
    assert any(e.startswith(f'Failed: Failed to pull image "{REPO}:9.9.9"') for e in progress.events)
    assert "Failed: Error: ErrImagePull" in progress.events
    # Old pods keep serving: only the surge pod of the new ReplicaSet is stuck.
    status = await target.status(spec)
    assert status.version == "9.9.9"
    assert status.available == 3
    stuck = [p for p in status.pods if p.version == "9.9.9"]
    assert [(p.ready, p.status) for p in stuck] == [(False, "ImagePullBackOff")]


async def test_crash_loop_is_reported_with_the_events(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    emu.fail_next_rollout("crash_loop")
    progress = Progress()
    result = await target.deploy(spec, "2.0.0", None, progress)

    assert not result.ok
    assert "exceeded its progress deadline" in result.message
    assert "BackOff: Back-off restarting failed container web in pod web-" in result.message
    status = await target.status(spec)
    crashing = [p for p in status.pods if p.version == "2.0.0"]
    assert crashing and all(p.status == "CrashLoopBackOff" and p.restarts > 0 and not p.ready for p in crashing)


async def test_progress_deadline_means_failure(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    emu.fail_next_rollout("deadline")
    result = await target.deploy(spec, "2.0.0", None, Progress())
    assert not result.ok
    assert "exceeded its progress deadline" in result.message
    assert "Unhealthy: Readiness probe failed" in result.message
    d = emu.deployment(NS, "web")
    progressing = next(c for c in d["status"]["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")


async def test_our_own_deadline_ends_a_rollout_that_never_moves(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    emu.auto_tick(None)  # the controller stops: the new generation is never even observed
    result = await target.deploy(replace(spec, timeout_s=0.2), "1.2.4", None, Progress())
    assert not result.ok
    assert result.message == (
        "rollout of deployment `prod/web` did not finish within 0.2 s: "
        "Waiting for deployment spec update to be observed..."
    )


async def test_paused_deployment_is_refused(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    emu.add_deployment(NS, "held", GOOD, replicas=1, container="web", paused=True)
    held = replace(spec, deployment="held")
    with pytest.raises(AdapterError, match="paused"):
        await target.deploy(held, "1.2.4", None, Progress())
    with pytest.raises(AdapterError, match="paused"):
        await target.restart(held, Progress())


# --- resume ---------------------------------------------------------------------------------------


async def test_resume_follows_a_rollout_started_before_a_restart(
    pool: BlockingPool, kubeconfig: Path, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    emu.auto_tick(None)  # hold the rollout still while the "old process" goes away
    first = make_target(pool, kubeconfig)
    started = asyncio.Event()

    async def note(p: DeployProgress) -> None:
        started.set()

    task = asyncio.create_task(first.deploy(spec, "1.2.4", None, note))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()  # the bot process stops mid-rollout
    with pytest.raises(asyncio.CancelledError):
        await task
    first.close()

    emu.auto_tick(0.01)
    second = make_target(pool, kubeconfig)  # a new process: nothing shared with the first one
    try:
        progress = Progress()
        result = await second.resume(spec, "1.2.4", progress)
        assert result.ok and result.revision == "2"
        assert len(emu.requests_to("/deployments/web", "PATCH")) == 1  # resume patched nothing
        assert progress.seen

        other = await second.resume(spec, "1.2.5", Progress())
        assert not other.ok
        assert other.message == (
            "deployment `prod/web` is at 1.2.4, not 1.2.5: that rollout never started or was replaced"
        )
    finally:
        second.close()


# --- rollback, restart, scale, status ---------------------------------------------------------------


async def test_rollback_to_the_previous_revision_like_kubectl_rollout_undo(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    assert (await target.deploy(spec, "1.2.4", None, Progress())).ok
    emu.fail_next_rollout("image_pull")
    assert not (await target.deploy(spec, "9.9.9", None, Progress())).ok

    result = await target.rollback(spec, None, None, Progress())

    assert result.ok, result
    assert result.revision == "4"
    assert emu.image(NS, "web") == f"{REPO}:1.2.4"
    patch = emu.requests_to("/deployments/web", "PATCH")[-1]
    assert patch.content_type == "application/json-patch+json"
    assert [op["path"] for op in patch.body] == ["/spec/template", "/metadata/annotations"]
    assert "pod-template-hash" not in patch.body[0]["value"]["metadata"]["labels"]
    # The revision annotation keeps the deployment's current value; the change cause comes from the RS.
    assert patch.body[1]["value"]["deployment.kubernetes.io/revision"] == "3"
    assert patch.body[1]["value"]["kubernetes.io/change-cause"] == "opsloop: deploy 1.2.4"
    # The controller reused revision 2's ReplicaSet, as it does for kubectl rollout undo.
    reused = [
        rs
        for rs in emu.replica_sets(NS, "web")
        if rs["metadata"]["annotations"].get("deployment.kubernetes.io/revision-history")
    ]
    assert [rs["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] for rs in reused] == ["2"]
    assert await target.running_version(spec) == "1.2.4"


async def test_rollback_to_a_version(target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator) -> None:
    result = await target.rollback(spec, "1.1.0", None, Progress())
    assert result.ok
    assert emu.image(NS, "web") == f"{REPO}:1.1.0"
    assert emu.requests_to("/deployments/web", "PATCH")[-1].content_type == "application/strategic-merge-patch+json"


async def test_rollback_without_history_is_an_error(target: KubernetesTarget, spec: TargetSpec) -> None:
    with pytest.raises(AdapterError, match=r"no earlier revision of deployment `prod/web` to roll back to"):
        await target.rollback(spec, None, None, Progress())


async def test_restart_rolls_out_a_new_revision(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    before = {p["metadata"]["name"] for p in emu.pods(NS, "web")}
    result = await target.restart(spec, Progress())
    assert result.ok and result.revision == "2"
    template = emu.deployment(NS, "web")["spec"]["template"]
    assert "kubectl.kubernetes.io/restartedAt" in template["metadata"]["annotations"]
    after = {p["metadata"]["name"] for p in emu.pods(NS, "web")}
    assert after and not (before & after)  # every pod replaced
    assert await target.running_version(spec) == "1.2.3"
    # A second restart within the same second still restarts.
    assert (await target.restart(spec, Progress())).revision == "3"


async def test_scale(target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator) -> None:
    await target.scale(spec, 5)
    assert emu.deployment(NS, "web")["spec"]["replicas"] == 5
    scale = emu.requests_to("/deployments/web/scale", "PATCH")[-1]
    assert scale.body == {"spec": {"replicas": 5}}
    await wait_until(lambda: len(emu.pods(NS, "web")) == 5, what="five pods")
    status = await target.status(spec)
    assert status.desired == 5 and len(status.pods) == 5
    assert len(emu.replica_sets(NS, "web")) == 1  # scaling makes no new revision
    with pytest.raises(AdapterError, match="cannot scale to -1"):
        await target.scale(spec, -1)


async def test_status(target: KubernetesTarget, spec: TargetSpec) -> None:
    status = await target.status(spec)
    assert (status.version, status.image) == ("1.2.3", GOOD)
    assert (status.desired, status.ready, status.available) == (3, 3, 3)
    assert status.message == 'deployment "web" successfully rolled out'
    assert len(status.pods) == 3
    assert all(p.ready and p.status == "Running" and p.restarts == 0 and p.version == "1.2.3" for p in status.pods)
    assert [p.name for p in status.pods] == sorted(p.name for p in status.pods)


async def test_container_defaults_to_the_one_named_like_the_deployment(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    assert await target.running_version(replace(spec, container=None)) == "1.2.3"
    with pytest.raises(AdapterNotFound, match=r"deployment `prod/web` has no container `sidecar` \(it has `web`\)"):
        await target.running_version(replace(spec, container="sidecar"))


async def test_context_and_its_namespace(target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator) -> None:
    emu.add_deployment("stage", "web", f"{REPO}:0.9.0", replicas=1)
    staging = replace(spec, context="staging", namespace=None)
    assert await target.running_version(staging) == "0.9.0"
    assert await target.running_version(replace(spec, namespace=None)) == "1.2.3"  # default context: prod
    with pytest.raises(AdapterError, match=r"no context `nowhere` in the kubeconfig \(contexts: emulator, staging\)"):
        await target.running_version(replace(spec, context="nowhere"))


async def test_in_cluster_service_account(
    pool: BlockingPool, tls_emu: KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a pod gets: the service host/port in the environment, token, CA and namespace as files.
    from kubernetes.config import incluster_config

    import adapters.kubernetes as k8s_adapter

    (tmp_path / "token").write_text(tls_emu.token)
    (tmp_path / "ca.crt").write_text(TEST_CERT)
    (tmp_path / "namespace").write_text("default\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(tls_emu.port))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setattr(k8s_adapter, "_SA_NAMESPACE", tmp_path / "namespace")
    t = KubernetesTarget(pool=pool, in_cluster=True, timeout=5.0, poll_interval=0.01)
    try:
        assert await t.check() == f"Kubernetes v1.30.4 at {tls_emu.url}, context in-cluster"
        assert await t.running_version(TargetSpec(service="web", env="prod", kind="kubernetes")) == "1.2.3"
    finally:
        t.close()


# --- failures -------------------------------------------------------------------------------------


async def test_unknown_deployment_is_not_found(target: KubernetesTarget, spec: TargetSpec) -> None:
    with pytest.raises(AdapterNotFound) as info:
        await target.deploy(replace(spec, deployment="nope"), "1.0.0", None, Progress())
    assert str(info.value) == 'Kubernetes: no deployment `prod/nope` (deployments.apps "nope" not found)'


async def test_api_down_is_unavailable(target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator) -> None:
    await emu.down()
    with pytest.raises(AdapterUnavailable, match=r"cannot reach the API server .*deployment `prod/web`"):
        await target.status(spec)
    await emu.up()
    assert (await target.status(spec)).version == "1.2.3"


async def test_slow_api_times_out_while_the_loop_stays_responsive(
    pool: BlockingPool, kubeconfig: Path, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    slow_target = make_target(pool, kubeconfig, timeout=1.0)
    emu.slow(5.0, "/apis/apps/v1/namespaces/prod/deployments/web")
    try:
        call = asyncio.create_task(slow_target.running_version(spec))
        # While the client waits in its thread, this loop (which also runs the emulator) keeps serving.
        async with aiohttp.ClientSession() as session, session.get(f"{emu.url}/version") as r:
            assert r.status == 200
        assert not call.done()
        with pytest.raises(AdapterTimeout, match=r"no answer within 1 s while reading deployment `prod/web`"):
            await call
    finally:
        emu.clear_faults()
        slow_target.close()


async def test_server_errors_carry_the_status_message(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    emu.fail_next("/deployments/web", status=503)
    with pytest.raises(
        AdapterUnavailable, match=r"answered 503 while reading deployment `prod/web` \(injected failure\)"
    ):
        await target.status(spec)
    emu.fail_next("/deployments/web", status=500)
    with pytest.raises(
        AdapterError, match=r"reading deployment `prod/web` failed: 500 Internal Server Error: injected"
    ):
        await target.status(spec)


async def test_wrong_token_is_rejected(
    pool: BlockingPool, emu: KubernetesEmulator, tmp_path: Path, spec: TargetSpec
) -> None:
    bad = emu.kubeconfig(tmp_path / "bad", namespace=NS, token="not-the-token")
    t = make_target(pool, bad)
    try:
        with pytest.raises(
            AdapterError, match=r"rejected our credentials while reading deployment `prod/web` \(Unauthorized\)"
        ):
            await t.status(spec)
    finally:
        t.close()


async def test_an_answer_the_client_rejects_is_an_adapter_error(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    d = emu.deployment(NS, "web")
    d["spec"]["replicas"] = "3"  # the 37 client's StrictInt refuses a string
    emu.fail_next("/deployments/web", status=200, body=d)
    with pytest.raises(AdapterError, match=r"unexpected answer while reading deployment `prod/web`: .*replicas"):
        await target.status(spec)


async def test_a_rollout_survives_a_short_api_outage(
    target: KubernetesTarget, spec: TargetSpec, emu: KubernetesEmulator
) -> None:
    seen: list[DeployProgress] = []

    async def on_progress(p: DeployProgress) -> None:
        if not seen:
            emu.fail_next("/namespaces/prod/deployments/web", status=503, count=2)  # the next two polls
        seen.append(p)

    result = await target.deploy(spec, "1.2.4", None, on_progress)
    assert result.ok, result
    assert [r.status for r in emu.requests_to("/namespaces/prod/deployments/web", "GET")].count(503) == 2

    # A longer outage (here: no grace at all) ends the deploy with the error; resume can pick it up later.
    seen.clear()
    target.outage_grace = 0.0
    emu.auto_tick(None)

    async def outage(p: DeployProgress) -> None:
        emu.fail_next("/namespaces/prod/deployments/web", status=503, count=3)

    with pytest.raises(AdapterUnavailable, match="following the rollout of deployment `prod/web`"):
        await target.deploy(spec, "1.2.5", None, outage)


# --- the emulator, through the client directly -----------------------------------------------------


def _apis(emu: KubernetesEmulator) -> tuple[client.ApiClient, client.AppsV1Api, client.CoreV1Api]:
    api = config.new_client_from_config_dict(emu.kubeconfig_dict(namespace=NS))
    return api, client.AppsV1Api(api), client.CoreV1Api(api)


async def test_emulator_watch_bookmarks_and_expiry(emu: KubernetesEmulator) -> None:
    emu.bookmark_interval = 0.05

    def scenario() -> tuple[list[str], int]:
        api, apps, _ = _apis(emu)
        try:
            listed = apps.list_namespaced_deployment(NS, field_selector="metadata.name=web")
            rv = listed.metadata.resource_version
            apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 4}})
            w = watch.Watch()
            kinds = []
            for event in w.stream(
                apps.list_namespaced_deployment,
                NS,
                field_selector="metadata.name=web",
                resource_version=rv,
                timeout_seconds=1,
                allow_watch_bookmarks=True,
            ):
                kinds.append(event["type"])
                if event["type"] == "BOOKMARK":
                    assert isinstance(event["object"], dict)  # the client leaves bookmarks undecoded
                    w.stop()
            emu_expired = 0
            emu.expire_history()
            try:
                for _ in watch.Watch().stream(
                    apps.list_namespaced_deployment, NS, resource_version=rv, timeout_seconds=1
                ):
                    pass
            except ApiException as exc:
                emu_expired = exc.status
            return kinds, emu_expired
        finally:
            api.close()

    kinds, expired = await asyncio.to_thread(scenario)
    assert kinds[0] == "MODIFIED" and kinds[-1] == "BOOKMARK"
    assert expired == 410


async def test_emulator_is_strict_where_the_apiserver_is(emu: KubernetesEmulator) -> None:
    def scenario() -> dict[str, object]:
        api, apps, core = _apis(emu)
        out: dict[str, object] = {}
        try:
            d = apps.read_namespaced_deployment("web", NS)
            stale = api.sanitize_for_serialization(d)
            apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"touched": "yes"}}})
            for name, call in {
                "conflict": lambda: apps.replace_namespaced_deployment("web", NS, stale),
                "invalid": lambda: apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": -1}}),
                "apply": lambda: apps.patch_namespaced_deployment(
                    "web", NS, {"spec": {}}, _content_type="application/apply-patch+yaml", field_manager="x"
                ),
                "field": lambda: core.list_namespaced_pod(NS, field_selector="spec.nope=1"),
                "missing": lambda: core.read_namespaced_pod("nope", NS),
            }.items():
                try:
                    call()
                    out[name] = "no error"
                except ApiException as exc:
                    body = json.loads(exc.body)
                    out[name] = (exc.status, body["reason"], body["message"])
            # Selectors: labels (set-based too) and the fields the apiserver indexes.
            out["pods"] = len(core.list_namespaced_pod(NS, label_selector="app in (web,api),!gone").items)
            out["warnings"] = len(core.list_namespaced_event(NS, field_selector="type=Warning").items)
            merged = apps.patch_namespaced_deployment(
                "web", NS, {"metadata": {"labels": {"touched": None}}}, _content_type="application/merge-patch+json"
            )
            out["merged"] = (merged.metadata.labels or {}).get("touched")
            out["scale"] = apps.read_namespaced_deployment_scale("web", NS).status.selector
        finally:
            api.close()
        return out

    out = await asyncio.to_thread(scenario)
    assert out["conflict"][:2] == (409, "Conflict")  # type: ignore[index]
    assert out["invalid"] == (
        422,
        "Invalid",
        'Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0',
    )
    assert out["apply"][:2] == (415, "UnsupportedMediaType")  # type: ignore[index]
    assert out["field"] == (400, "BadRequest", "field label not supported: spec.nope")
    assert out["missing"] == (404, "NotFound", 'pods "nope" not found')
    assert out["pods"] == 3 and out["warnings"] == 0
    assert out["merged"] is None
    assert out["scale"] == "app=web"


# --- the real kubectl against the emulator -----------------------------------------------------------


@pytest.fixture
def kubectl_binary() -> str:
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        reason = "no kubectl binary (Debian: apt-get install kubernetes-client)"
        if require_servers():
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest_asyncio.fixture
async def tls_emu() -> AsyncIterator[KubernetesEmulator]:
    # kubectl (client-go) sends credentials only over TLS, so the token check needs https here.
    async with KubernetesEmulator(tls=True, deadline_ticks=4) as e:
        e.add_deployment("default", "web", GOOD, replicas=3)
        yield e
        assert e.server_errors == [], e.server_errors


class Kubectl:
    """The real kubectl against the emulator, with its own HOME, discovery cache and kubeconfig."""

    def __init__(self, binary: str, emu: KubernetesEmulator, home: Path) -> None:
        self.binary, self.emu, self.home = binary, emu, home
        self.kubeconfig = emu.kubeconfig(home / "kubeconfig")

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.home)}
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            "--cache-dir",
            str(self.home / "cache"),
            "--request-timeout=20s",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def kubectl(kubectl_binary: str, tls_emu: KubernetesEmulator, tmp_path: Path) -> Kubectl:
    return Kubectl(kubectl_binary, tls_emu, tmp_path)


@pytest.mark.servers
async def test_kubectl_get_deployments_json(kubectl: Kubectl, tls_emu: KubernetesEmulator) -> None:
    rc, out, err = await kubectl("get", "deployments", "-o", "json")
    assert rc == 0, err
    items = json.loads(out)["items"]
    assert [i["metadata"]["name"] for i in items] == ["web"]
    assert items[0]["kind"] == "Deployment"
    assert items[0]["spec"]["template"]["spec"]["containers"][0]["image"] == GOOD
    assert items[0]["status"]["availableReplicas"] == 3
    assert all(r.headers.get("Authorization") == f"Bearer {tls_emu.token}" for r in tls_emu.requests_to("/deployments"))
    rc, out, err = await kubectl("get", "pods")  # server-side printing (a Table)
    assert rc == 0, err
    assert out.split()[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert out.count("Running") == 3


@pytest.mark.servers
async def test_kubectl_rollout_status_waits_for_a_good_rollout(kubectl: Kubectl, tls_emu: KubernetesEmulator) -> None:
    rc, _, err = await kubectl("set", "image", "deployment/web", f"web={REPO}:1.2.4")
    assert rc == 0, err
    tls_emu.auto_tick(0.05)  # the rollout moves while kubectl watches it
    rc, out, err = await kubectl("rollout", "status", "deployment/web")
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == 'deployment "web" successfully rolled out'
    assert tls_emu.rollout_complete("default", "web")


@pytest.mark.servers
async def test_kubectl_rollout_status_fails_after_the_deadline(kubectl: Kubectl, tls_emu: KubernetesEmulator) -> None:
    tls_emu.fail_next_rollout("image_pull")
    rc, _, err = await kubectl("set", "image", "deployment/web", f"web={REPO}:9.9.9")
    assert rc == 0, err
    tls_emu.settle()
    rc, out, err = await kubectl("rollout", "status", "deployment/web")
    assert rc == 1
    assert 'deployment "web" exceeded its progress deadline' in err
    rc, out, err = await kubectl("get", "pods")
    assert "ImagePullBackOff" in out


@pytest.mark.servers
async def test_kubectl_rollout_undo_after_a_failed_deploy_by_the_adapter(
    kubectl: Kubectl, tls_emu: KubernetesEmulator, pool: BlockingPool
) -> None:
    target = KubernetesTarget(pool=pool, kubeconfig=str(kubectl.kubeconfig), timeout=5.0, poll_interval=0.01)
    spec = TargetSpec(service="web", env="prod", kind="kubernetes", namespace="default", image=REPO, timeout_s=30.0)
    tls_emu.auto_tick(0.01)
    try:
        assert (await target.deploy(spec, "1.2.4", None, Progress())).ok
        tls_emu.fail_next_rollout("crash_loop")
        assert not (await target.deploy(spec, "9.9.9", None, Progress())).ok
    finally:
        target.close()
    tls_emu.auto_tick(None)

    rc, out, err = await kubectl("rollout", "undo", "deployment/web")
    assert rc == 0, err
    assert "rolled back" in out
    tls_emu.settle()
    assert tls_emu.image("default", "web") == f"{REPO}:1.2.4"
    rc, out, err = await kubectl("rollout", "status", "deployment/web")
    assert rc == 0, err
    rc, out, err = await kubectl("rollout", "history", "deployment/web")
    assert rc == 0, err
    assert "opsloop: deploy 1.2.4" in out  # revision 4: the reused ReplicaSet keeps its change cause


@pytest.mark.servers
async def test_kubectl_scale(kubectl: Kubectl, tls_emu: KubernetesEmulator) -> None:
    rc, _, err = await kubectl("scale", "deployment/web", "--replicas=5")
    assert rc == 0, err
    assert tls_emu.deployment("default", "web")["spec"]["replicas"] == 5
    tls_emu.settle()
    assert len(tls_emu.pods("default", "web")) == 5
    assert len(tls_emu.replica_sets("default", "web")) == 1
    d = client.V1Deployment.from_dict(tls_emu.deployment("default", "web"))
    assert rollout_state(d) == ("done", 'deployment "web" successfully rolled out')


async def test_warm_loads_the_client_ahead_and_a_bad_kubeconfig_is_left_to_the_first_call(
    pool: BlockingPool, kubeconfig: Path, tmp_path: Path, emu: KubernetesEmulator
) -> None:
    t = make_target(pool, kubeconfig)
    assert isinstance(t, Warmable)
    before = len(emu.requests)
    try:
        await t.warm()
        assert list(t._conns) == [None]  # the default context is connected, ready for the first call
        assert len(emu.requests) == before  # warming asks the cluster nothing
    finally:
        t.close()
    broken = tmp_path / "broken-kubeconfig"
    broken.write_text("not: [a kubeconfig")
    bad = make_target(pool, broken)
    try:
        await bad.warm()  # says nothing; the first real call reports the problem with its context
        with pytest.raises(AdapterError, match=r"^Kubernetes: .*ParserError"):
            await bad.check()
    finally:
        bad.close()
