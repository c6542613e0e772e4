"""The operator's own jobs: run on each environment, compared against a noise floor, benchmarked and costed.

`run_job` runs on an environment's worker; `compare_job_arms` and `judge_job_bench` on the control
worker; `record_code_root` on the source's worker once the job's code is synced.
"""

from activities.jobs.bench import JobBenchComparison, JobBenchSide, JudgeJobBenchInput, judge_job_bench
from activities.jobs.compare import CompareJobArmsInput, JobComparison, compare_job_arms
from activities.jobs.files import ArtifactRef, CodeRoot, CodeRootInput, code_root, record_code_root
from activities.jobs.run import JobProgress, JobResult, OutputFile, RunJobInput, run_job
from activities.jobs.series import JobTiming
from activities.jobs.spec import JobCostModel, JobSpec, JobTolerances

__all__ = [
    "ArtifactRef",
    "CodeRoot",
    "CodeRootInput",
    "CompareJobArmsInput",
    "JobBenchComparison",
    "JobBenchSide",
    "JobComparison",
    "JobCostModel",
    "JobProgress",
    "JobResult",
    "JobSpec",
    "JobTiming",
    "JobTolerances",
    "JudgeJobBenchInput",
    "OutputFile",
    "RunJobInput",
    "code_root",
    "compare_job_arms",
    "judge_job_bench",
    "record_code_root",
    "run_job",
]
