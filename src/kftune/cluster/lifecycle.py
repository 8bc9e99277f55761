"""One lifecycle for the cluster resources kftune's launchers run: a Kubeflow Trainer ``TrainJob``,
a Katib ``Experiment``, a KServe ``InferenceService``.

A launcher describes its resource as a :class:`ClusterResource` (its document, how it reports
progress, when it has finished and why it failed, how an existing one is updated) and hands it
to :func:`run_resource`, which does the rest the same way for every kind:

1. **Create or update.** A resource named afresh for each run (TrainJob, Experiment) is created.
   A create whose answer was lost (a 5xx, a dropped connection) is retried, and a retry answered
   409 means the lost attempt went through: the resource is adopted if it carries the kind's
   labels. A resource updated in place (an InferenceService, whose name is the user's) is read
   first and, if it exists, updated by the kind.
2. **Watch.** It is read every ``poll_seconds`` until the kind says it has finished, the kind
   reporting what changed as lines. A transient API error (5xx, 429, connection) is retried (at
   the pace of the polls, see :func:`~kftune.cluster.kube.poll_until`; single calls
   with backoff); a failure the resource reports must hold for the kind's grace period, since
   some controllers report one on the way and clear it; one deadline covers the whole run.
3. **Clean up** by the resource's :class:`Cleanup` policy, however the run ended (success,
   failure, timeout, an API error, SIGTERM, Ctrl-C).

A failure is raised with the resource's own reason and message, once it has been cleaned up.

Kept free of torch and the Kubeflow SDKs, like :mod:`~kftune.cluster.kube`.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from kftune.cluster.kube import (
    MAX_API_ERRORS,
    REQUEST_TIMEOUT_SECONDS,
    api_error,
    is_transient,
    kube_api_client,
    poll_until,
    sigterm_raises,
)
from kftune.errors import KftuneError

log = logging.getLogger(__name__)

RETRY_DELAY_SECONDS = 1.0  # first wait after a transient error of a single call; doubles from there
MAX_RETRY_DELAY_SECONDS = 30.0
# A cancelled pod has its grace period (30 s by default) to delete what it created before it is
# killed: a delete gets fewer retries than the other calls.
DELETE_RETRIES = 2


class Cleanup(enum.Enum):
    """What becomes of the resource once the run is over, however it ended."""

    DELETE = "delete"
    """A run's worker (a TrainJob, an Experiment): deleted, and its pods with it."""
    KEEP = "keep"
    """The result itself (an InferenceService): left as the cluster has it; a failed update keeps
    serving the previous revision, a failed new one stays for ``kubectl describe``."""


@dataclass(frozen=True)
class Outcome:
    """How a resource ended, in its own words."""

    succeeded: bool
    reason: str


@dataclass
class Finished:
    """A resource that finished well: what :func:`run_resource` returns."""

    obj: dict
    """The resource as last read."""
    created: bool
    """Created by this run (False: an existing one was updated)."""
    seconds: float
    """From the start of the run to its end."""
    outcome: Outcome

    @property
    def uid(self) -> str | None:
        return (self.obj.get("metadata") or {}).get("uid")


class NotCreated(KftuneError):
    """The API server refused the create: nothing of this run's exists to clean up."""

    def __init__(self, message: str, *, retried: bool = False):
        super().__init__(message)
        self.retried = retried
        """The create went out more than once (a transient error): an earlier attempt's answer was lost."""


class AlreadyExists(NotCreated):
    """A resource of that name exists (a 409): someone else's, or one a lost attempt of this create made."""


class ClusterResource:
    """One resource a launcher runs: what its kind brings to :func:`run_resource`.

    A subclass sets the class attributes and implements :meth:`body` and :meth:`observe`; the
    other methods have defaults that fit a resource created afresh for each run, and are
    overridden where a kind has more to say (a progress state, hints for a refused call).
    """

    kind: ClassVar[str]
    """As messages name it: ``TrainJob``, ``Katib Experiment``."""
    kubectl_kind: ClassVar[str]
    """As ``kubectl`` takes it: ``trainjob``."""
    group: ClassVar[str]
    version: ClassVar[str]
    plural: ClassVar[str]
    labels: ClassVar[dict[str, str]]
    """kftune's labels on the resource; one found in kftune's way is adopted only if it has them."""
    updates_in_place: ClassVar[bool] = False
    """Read first and, if it exists, updated (:meth:`update`) instead of created."""

    def __init__(
        self,
        namespace: str,
        name: str,
        emit: Callable[[str], None],
        *,
        cleanup: Cleanup = Cleanup.DELETE,
        failure_grace_seconds: float = 0.0,
    ):
        self.namespace = namespace
        self.name = name
        self.emit = emit
        self.cleanup = cleanup
        self.failure_grace_seconds = failure_grace_seconds
        self._seen_conditions: set[tuple] = set()

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    # --- what every kind brings ---

    def body(self) -> dict:
        """The document to create."""
        raise NotImplementedError

    def observe(self, api: ResourceApi, obj: dict) -> Outcome | None:
        """Report what changed since the last poll; the outcome once the resource has finished."""
        raise NotImplementedError

    # --- what a kind may override ---

    def state(self) -> str:
        """The last state seen, for a timeout message."""
        return "Created"

    def created(self, obj: dict) -> None:
        """Announce the created (or adopted) resource."""
        self.emit(f"{self} created")

    def update(self, api: ResourceApi, existing: dict) -> None:
        """Update the ``existing`` resource to this run's spec (kinds that update in place)."""
        raise NotImplementedError(f"{self.kind} is not updated in place")

    def finish(self, api: ResourceApi, obj: dict, outcome: Outcome) -> Outcome:
        """Read what goes with the finished resource before it is cleaned up; the outcome, with more
        to say if need be."""
        return outcome

    def kept(self) -> None:
        """Called when a resource this run created or updated is kept (:attr:`Cleanup.KEEP`)."""

    def refused(self, verb: str, e: ApiException) -> str:
        """The error message for a call the API server refused (4xx), with hints where they help."""
        return f"cannot {verb} {self}: {api_error(e)}"

    def failure_error(self, reason: str, seconds: float) -> str:
        """The error for a resource that failed with ``reason`` after ``seconds``."""
        return f"{self} failed after {seconds:.0f} s: {reason}"

    def timeout_error(self, seconds: float, timeout_seconds: float) -> str:
        """The error for a resource not finished ``seconds`` after the start (the deadline: ``timeout_seconds``)."""
        return f"{self} timed out after {timeout_seconds:g} s without finishing (last state: {self.state()})"

    # --- for the kinds ---

    def report_conditions(self, conditions, prefix: str) -> str | None:
        """Report each condition not seen before (by type, status and reason) as ``prefix:
        Type=Status (Reason): message``; return the type of the last one that holds (status True).

        ``conditions``: the SDK models' conditions (``type``, ``status``, ``reason``, ``message``).
        """
        holds = None
        for condition in conditions or []:
            key = (condition.type, condition.status, condition.reason)
            if key in self._seen_conditions:
                continue
            self._seen_conditions.add(key)
            if condition.status == "True":
                holds = condition.type
            detail = f": {condition.message}" if condition.message else ""
            self.emit(f"{prefix}: {condition.type}={condition.status} ({condition.reason}){detail}")
        return holds

    # --- derived ---

    def owns(self, obj: dict) -> bool:
        """Whether ``obj`` carries this kind's labels."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(labels.get(key) == value for key, value in self.labels.items())

    def aftermath(self) -> str:
        """What the cleanup does, for a message about a run that did not finish well."""
        if self.cleanup is Cleanup.DELETE:
            return "deleting it"
        return f"left in place (kubectl describe {self.kubectl_kind} -n {self.namespace} {self.name})"


class ResourceApi:
    """The API calls on one resource. A single call is retried with backoff on transient errors."""

    def __init__(
        self, api_client: client.ApiClient, resource: ClusterResource, retry_delay_seconds: float = RETRY_DELAY_SECONDS
    ):
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.resource = resource
        self.retry_delay_seconds = retry_delay_seconds

    @property
    def _collection(self) -> tuple[str, str, str, str]:
        r = self.resource
        return r.group, r.version, r.namespace, r.plural

    def call(self, verb: str, method: Callable, *args, retries: int = MAX_API_ERRORS, quiet: bool = False, **kwargs):
        """``method(*args, **kwargs)`` (with a request timeout), retried on transient errors.

        A refusal (4xx) is raised as the client's :class:`ApiException`; transient errors past
        ``retries`` as :class:`KftuneError`, ``verb`` saying what the call was for. Each retry is
        reported unless ``quiet``.
        """
        return call_with_retries(
            f"{verb} {self.resource}", method, *args, retries=retries, retry_delay_seconds=self.retry_delay_seconds,
            emit=None if quiet else self.resource.emit, **kwargs,
        )  # fmt: skip

    def get(self, *, missing_ok: bool = False, retry: bool = True) -> dict | None:
        """The resource; None if there is none and ``missing_ok``.

        Without ``retry`` a transient error is raised as it came (the watch retries at its own
        pace); a refusal is raised as :class:`KftuneError` with the kind's hints.
        """
        method, args = self.custom.get_namespaced_custom_object, (*self._collection, self.resource.name)
        try:
            if retry:
                return self.call("get", method, *args)
            return method(*args, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as e:
            if missing_ok and e.status == 404 and names_object(e, self.resource.name):
                return None
            if not retry and is_transient(e):
                raise
            raise KftuneError(self.resource.refused("get", e)) from e

    def create(self, body: dict) -> dict:
        """Create the resource; return it as the API server has it.

        Raises :class:`AlreadyExists` on a 409 (saying whether the create went out more than
        once) and :class:`NotCreated` on any other refusal.
        """
        attempts = 0

        def post(**kwargs):
            nonlocal attempts
            attempts += 1
            return self.custom.create_namespaced_custom_object(*self._collection, body, **kwargs)

        try:
            return self.call("create", post)
        except ApiException as e:
            error = AlreadyExists if e.status == 409 else NotCreated
            raise error(self.resource.refused("create", e), retried=attempts > 1) from e

    def patch(self, patch: dict) -> dict:
        """Apply a JSON merge patch (the client sends a dict as application/merge-patch+json)."""
        try:
            return self.call(
                "patch", self.custom.patch_namespaced_custom_object, *self._collection, self.resource.name, patch
            )
        except ApiException as e:
            raise KftuneError(self.resource.refused("patch", e)) from e

    def delete(self) -> None:
        """Delete the resource and, through the garbage collector, what it owns (its pods).

        Never raises: a resource that cannot be deleted is logged as an error with the command
        that deletes it, since this runs on the way out of another error.
        """
        r = self.resource
        try:
            self.call(
                "delete", self.custom.delete_namespaced_custom_object, *self._collection, r.name,
                retries=DELETE_RETRIES, propagation_policy="Background",
            )  # fmt: skip
        except ApiException as e:
            if e.status != 404:  # 404: gone already, or never created
                log.error(CANNOT_DELETE, r, api_error(e), r.kubectl_kind, r.namespace, r.name)
            return
        except KftuneError as e:
            log.error(CANNOT_DELETE, r, e, r.kubectl_kind, r.namespace, r.name)
            return
        r.emit(f"{r} deleted")


CANNOT_DELETE = "could not delete %s (%s); delete it with: kubectl delete %s -n %s %s"


def call_with_retries(
    what: str,
    method: Callable,
    *args,
    retries: int = MAX_API_ERRORS,
    retry_delay_seconds: float = RETRY_DELAY_SECONDS,
    emit: Callable[[str], None] | None = None,
    **kwargs,
):
    """``method(*args, **kwargs)`` with a request timeout, retried with backoff on transient errors.

    The waits start at ``retry_delay_seconds`` and double up to ``MAX_RETRY_DELAY_SECONDS``; each
    is reported to ``emit`` (if any). A refusal (4xx) is raised as the client's ``ApiException``;
    transient errors past ``retries`` as :class:`KftuneError` saying ``cannot <what>``.
    """
    errors = 0
    while True:
        try:
            return method(*args, _request_timeout=REQUEST_TIMEOUT_SECONDS, **kwargs)
        except (ApiException, HTTPError) as e:
            if not is_transient(e):
                raise
            errors += 1
            if errors > retries:
                raise KftuneError(
                    f"cannot {what}: the Kubernetes API kept failing ({errors} attempts): {api_error(e)}"
                ) from e
            delay = min(retry_delay_seconds * 2 ** (errors - 1), MAX_RETRY_DELAY_SECONDS)
            if emit is not None:
                emit(f"Kubernetes API error ({api_error(e)}), retrying in {delay:g} s ({errors}/{retries})")
            time.sleep(delay)


def names_object(e: ApiException, name: str, kind: str | None = None) -> bool:
    """Whether the API's 404 is about the object ``name`` (of ``kind``), not about a missing API."""
    try:
        details = json.loads(e.body).get("details") or {}
    except (TypeError, ValueError, AttributeError):
        return False
    return details.get("name") == name and (kind is None or details.get("kind") == kind)


def holding_condition(conditions, types: tuple[str, ...]) -> dict | None:
    """``{"type", "reason", "message"}`` of the first condition that holds (status True) and is one
    of ``types`` (a job's Complete or Failed, an Experiment's Succeeded or Failed), if any.

    ``conditions``: the SDK models' conditions, or None.
    """
    for condition in conditions or []:
        if condition.status == "True" and condition.type in types:
            return {"type": condition.type, "reason": condition.reason, "message": condition.message}
    return None


def emitter(log: Callable[[str], None] | None, logger: logging.Logger) -> Callable[[str], None]:
    """Where a launcher's progress lines go: ``log`` if given, else ``logger`` at INFO."""
    return log or functools.partial(logger.info, "%s")


# --- the lifecycle ------------------------------------------------------------------------------


def run_resource(
    resource: ClusterResource,
    api_client: client.ApiClient | None = None,
    *,
    timeout_seconds: float,
    poll_seconds: float,
    retry_delay_seconds: float | None = None,
) -> Finished:
    """Create (or update) ``resource``, watch it until it finishes, clean it up by its policy.

    ``api_client`` defaults to the pod's service account or the kubeconfig (and is then closed).
    ``retry_delay_seconds`` is the first wait after a transient error of a single call (default:
    1 s, or ``poll_seconds`` if shorter). Raises :class:`KftuneError` when the API server refuses
    a call or keeps failing, when the resource fails (with its own reason, after the cleanup), when
    it has not finished ``timeout_seconds`` after the start, and on SIGTERM.
    """
    if retry_delay_seconds is None:
        retry_delay_seconds = min(RETRY_DELAY_SECONDS, poll_seconds)
    own_client = api_client is None
    api_client = api_client or kube_api_client()
    api = ResourceApi(api_client, resource, retry_delay_seconds)
    start = time.monotonic()
    may_exist = False  # whether there may be something of this run's to clean up
    try:
        with sigterm_raises(f"{resource.namespace}/{resource.name}", resource.kind, resource.aftermath()):
            may_exist = True  # from here on a create (or its retry) may have gone through
            try:
                created = _create_or_update(resource, api)
            except NotCreated:
                may_exist = False
                raise
            obj, outcome = _watch(resource, api, start, timeout_seconds, poll_seconds)
            outcome = resource.finish(api, obj, outcome)
    finally:
        try:
            if may_exist and resource.cleanup is Cleanup.DELETE:
                api.delete()
            elif may_exist:
                resource.kept()
        finally:
            if own_client:
                api_client.close()
    seconds = time.monotonic() - start
    if not outcome.succeeded:
        message = resource.failure_error(outcome.reason, seconds)
        raise KftuneError(message if resource.cleanup is Cleanup.DELETE else f"{message}; {resource.aftermath()}")
    return Finished(obj=obj, created=created, seconds=seconds, outcome=outcome)


def _create_or_update(resource: ClusterResource, api: ResourceApi) -> bool:
    """Create the resource, adopt the one a lost attempt of the create made, or update the
    existing one (kinds that update in place); whether this run created it."""
    existing = api.get(missing_ok=True) if resource.updates_in_place else None
    if existing is None:
        try:
            obj = api.create(resource.body())
        except AlreadyExists as e:
            if resource.updates_in_place:
                who = "by a lost attempt of this create or by someone else" if e.retried else "by someone else"
                resource.emit(f"{resource} was created meanwhile {who}; updating it")
                existing = api.get()
            elif e.retried and resource.owns(found := api.get(missing_ok=True) or {}):
                resource.emit(f"{resource} exists: made by an earlier attempt of this create, whose answer was lost")
                obj = found
            else:
                raise
        if existing is None:
            resource.created(obj)
            return True
    resource.update(api, existing)
    return False


def _watch(
    resource: ClusterResource, api: ResourceApi, start: float, timeout_seconds: float, poll_seconds: float
) -> tuple[dict, Outcome]:
    """Poll until the resource has finished (a failure holding for its grace period) or the deadline."""
    failing_since: float | None = None

    def fetch() -> tuple[dict, Outcome] | None:
        nonlocal failing_since
        obj = api.get(retry=False)
        outcome = resource.observe(api, obj)
        if outcome is None or outcome.succeeded:
            failing_since = None
            return None if outcome is None else (obj, outcome)
        now = time.monotonic()
        failing_since = now if failing_since is None else failing_since
        return (obj, outcome) if now - failing_since >= resource.failure_grace_seconds else None

    def timeout_error() -> str:
        return f"{resource.timeout_error(time.monotonic() - start, timeout_seconds)}; {resource.aftermath()}"

    return poll_until(
        fetch, what=str(resource), timeout_seconds=max(0.0, start + timeout_seconds - time.monotonic()),
        poll_seconds=poll_seconds, emit=resource.emit, state=resource.state, timeout_error=timeout_error,
    )  # fmt: skip
