"""The operator's own jobs: run on each environment, compared against a noise floor, benchmarked and costed.

`run_job` runs on an environment's worker (also the two halves of a handoff: until SIGTERM and a
checkpoint, then resumed from it); `compare_job_arms`, `judge_handoff` and `judge_job_bench` on the
control worker; `record_code_root` on the source's worker once the job's code is synced.
"""

from activities.jobs.compare import CompareJobArmsInput, JobComparison, compare_job_arms
from activities.jobs.continuity import (
    HandoffComparison,
    HandoffMeasures,
    JudgeHandoffInput,
    JudgeMoveInput,
    judge_handoff,
    judge_move,
)
from activities.jobs.files import ArtifactRef, CodeRoot, CodeRootInput, code_root, record_code_root
from activities.jobs.resume import CheckpointRef
from activities.jobs.run import JobProgress, JobResult, OutputFile, RunJobInput, run_job
from activities.jobs.series import JobTiming
from activities.jobs.speed import JobBenchComparison, JobBenchSide, JudgeJobBenchInput, judge_job_bench
from skyshift.spec.jobs import JobCostModel, JobSpec, JobTolerances, ResumeSpec

__all__ = [
    "ArtifactRef",
    "CheckpointRef",
    "CodeRoot",
    "CodeRootInput",
    "CompareJobArmsInput",
    "HandoffComparison",
    "HandoffMeasures",
    "JobBenchComparison",
    "JobBenchSide",
    "JobComparison",
    "JobCostModel",
    "JobProgress",
    "JobResult",
    "JobSpec",
    "JobTiming",
    "JobTolerances",
    "JudgeHandoffInput",
    "JudgeJobBenchInput",
    "JudgeMoveInput",
    "OutputFile",
    "ResumeSpec",
    "RunJobInput",
    "code_root",
    "compare_job_arms",
    "judge_handoff",
    "judge_job_bench",
    "judge_move",
    "record_code_root",
    "run_job",
]
