"""Where a search keeps its study: Optuna's RDB storage with heartbeats, and its samplers.

A worker killed mid-trial leaves a RUNNING trial behind. Optuna fails (and, here, retries
once) a trial whose heartbeat stopped; a worker killed after creating a trial but before its
first heartbeat leaves a trial Optuna never fails, and a rerun waiting for it would wait for
ever. :class:`_Storage` also counts those as stale once they are older than the grace period.
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import signal
import time
import warnings

import optuna
from optuna.trial import TrialState

from autocompress.exceptions import RunError
from autocompress.study._config import redact_url

__all__ = ["GRACE_S", "HEARTBEAT_S", "KILL_AT_TRIAL_ENV", "make_sampler", "open_storage",
           "open_study"]

HEARTBEAT_S = 5
GRACE_S = 15
#: Fault hook for tests: ``N`` makes the process kill itself (SIGKILL) right after creating
#: trial ``N``, before its first heartbeat; ``N:trained`` when trial ``N`` writes its record,
#: after training, while its heartbeat runs and before it completes; ``*`` for any trial.
KILL_AT_TRIAL_ENV = "AUTOCOMPRESS_TEST_KILL_AT_TRIAL"


def _kill_if(number: int, moment: str) -> None:
    setting = os.environ.get(KILL_AT_TRIAL_ENV)
    if not setting:
        return
    target, _, when = setting.partition(":")
    if target in ("*", str(number)) and (when or "created") == moment:
        os.kill(os.getpid(), signal.SIGKILL)


class _Storage(optuna.storages.RDBStorage):
    """RDBStorage that also treats RUNNING trials without any heartbeat as stale once they
    started more than the grace period ago."""

    def _create_new_trial(self, study_id: int,
                          template_trial: optuna.trial.FrozenTrial | None = None
                          ) -> optuna.trial.FrozenTrial:
        # (Optuna's cached storage calls this, not create_new_trial)
        trial = super()._create_new_trial(study_id, template_trial)
        if template_trial is None:
            _kill_if(trial.number, "created")
        return trial

    def set_trial_user_attr(self, trial_id: int, key: str, value: object) -> None:
        super().set_trial_user_attr(trial_id, key, value)
        if key == "record":
            _kill_if(self.get_trial_number_from_id(trial_id), "trained")

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        from optuna.storages._rdb import models

        grace = _dt.timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 0))
        # datetime_start is written by the worker's clock (datetime.now()), as Optuna does
        cutoff = _dt.datetime.now() - grace
        session = self.scoped_session()
        try:
            running = (session.query(models.TrialModel)
                       .filter(models.TrialModel.state == TrialState.RUNNING)
                       .filter(models.TrialModel.study_id == study_id).all())
            for trial in running:
                started = trial.datetime_start
                if (not trial.heartbeats and started is not None and started < cutoff
                        and trial.trial_id not in stale):
                    stale.append(trial.trial_id)
            session.commit()
        finally:
            session.close()
        return stale


def open_storage(url: str, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage for ``url`` with heartbeats: a worker killed mid-trial stops its
    heartbeat (or never wrote one); after the grace period its trial is failed and retried
    once. Workers that start together race to create the database's tables: the loser of
    that race tries again. ``heartbeat=False`` for studies driven by ask and tell (Optuna's
    heartbeat only runs inside ``optimize``)."""
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            return _open(url, heartbeat)
        except Exception as exc:
            if attempt + 1 < _OPEN_ATTEMPTS and _is_creation_race(exc):
                time.sleep(0.5 + random.random())
                continue
            raise
    raise AssertionError("unreachable")


_OPEN_ATTEMPTS = 5


def _is_creation_race(exc: BaseException) -> bool:
    """Two workers created the same tables at once (the database says so)."""
    try:
        from sqlalchemy.exc import IntegrityError, ProgrammingError
    except ImportError:
        return False
    cause = exc.__cause__ if isinstance(exc, RunError) else exc
    return isinstance(cause, IntegrityError | ProgrammingError) and (
        "already exists" in str(cause) or "duplicate key" in str(cause))


def _open(url: str, heartbeat: bool) -> optuna.storages.BaseStorage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if not heartbeat:
                return optuna.storages.RDBStorage(url)
            return _Storage(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=1),
            )
    except ImportError as exc:
        raise RunError(f"cannot open the study storage {redact_url(url)}: its database driver "
                       "is not installed (PostgreSQL: pip install 'autocompress[postgres]')"
                       ) from exc
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunError(f"cannot open the study storage {redact_url(url)}: "
                       f"{type(exc).__name__}: {_redact_text(reason, url)}; check the URL, that "
                       "the database server runs and that the folder exists") from exc


def _redact_text(text: str, url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return text
    return text.replace(str(password), "***") if password else text


def make_sampler(kind: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """Optuna's own samplers; TPE (multivariate) is the default. All honour the budget
    constraint set with ``trial.set_constraint``."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials)))
    # group=True: with students in the space, parameters are conditional on the kind
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(3, min(10, trials // 3)), multivariate=True,
        group=True)


def open_study(storage: optuna.storages.BaseStorage, name: str, seed: int, trials: int,
               sampler: str = "tpe", objectives: int = 2) -> optuna.Study:
    """Create or load the study ``name`` (maximise accuracy or score, minimise latency, and
    with three objectives also the size); the sampler's seed moves on with the trials
    already in it, so a resumed run draws new candidates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        existing = 0
        try:
            existing = len(optuna.load_study(study_name=name, storage=storage).trials)
        except KeyError:
            pass
        return optuna.create_study(study_name=name, storage=storage,
                                   sampler=make_sampler(sampler, seed + existing, trials),
                                   directions=["maximize"] + ["minimize"] * (objectives - 1),
                                   load_if_exists=True)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and retry once) trials whose worker died, including those that died before
    their first heartbeat."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
