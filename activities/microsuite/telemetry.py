"""GPU telemetry during the run: an NVML sampler thread, and per-test summaries of what it saw.

A figure alone can look fine on a GPU that spent the test power-capped, thermally throttled or
correcting ECC errors; the summary that travels with each figure says so. The raw series is kept
out of workflow history (it can be thousands of samples): it is written to a store and referenced.
On a machine without NVML the sampler does not start and says why.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from activities.microsuite.models import Stat, TelemetrySample, TelemetrySummary

#: NVML clock-event ("throttle") reason bits, by the names nvidia-smi prints. nvidia-ml-py exposes the same
#: values as nvmlClocksEventReason* constants; they are spelled out here so summaries decode without NVML.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
#: Reasons that mean the clocks were held back by power, heat or the board, rather than by choice or idleness.
SLOWDOWN_REASONS = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


def decode_reasons(mask: int) -> list[str]:
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    return names + ([f"unknown_0x{unknown:x}"] if unknown else [])


def _stat(values: Iterable[float | int | None]) -> Stat | None:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return Stat(min=min(present), median=statistics.median(present), max=max(present))


def _delta(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return present[-1] - present[0] if present else None


def summarize(samples: list[TelemetrySample], gpu: int) -> TelemetrySummary:
    """min/median/max of every reading, the reasons seen, and error counters as increases over the window."""
    own = [s for s in samples if s.gpu == gpu]
    masks = [s.clock_event_reasons for s in own if s.clock_event_reasons is not None]
    seen = 0
    for mask in masks:
        seen |= mask
    uncorrectable = [s.remapped_rows_uncorrectable for s in own if s.remapped_rows_uncorrectable is not None]
    retired = [s.retired_pages for s in own if s.retired_pages is not None]
    links = [s.nvlink_links for s in own if s.nvlink_links is not None]
    return TelemetrySummary(
        gpu=gpu,
        samples=len(own),
        utilization_pct=_stat(s.utilization_pct for s in own),
        memory_used_mib=_stat(s.memory_used_mib for s in own),
        power_w=_stat(s.power_w for s in own),
        sm_clock_mhz=_stat(s.sm_clock_mhz for s in own),
        memory_clock_mhz=_stat(s.memory_clock_mhz for s in own),
        temperature_c=_stat(s.temperature_c for s in own),
        clock_event_reasons=decode_reasons(seen),
        throttled_fraction=round(sum(bool(m & SLOWDOWN_REASONS) for m in masks) / len(masks), 4) if masks else 0.0,
        ecc_corrected_delta=_delta([s.ecc_corrected for s in own]),
        ecc_uncorrected_delta=_delta([s.ecc_uncorrected for s in own]),
        remapped_rows_uncorrectable=max(uncorrectable) if uncorrectable else None,
        remapping_pending=any(s.remapping_pending for s in own),
        remapping_failed=any(s.remapping_failed for s in own),
        retired_pages=max(retired) if retired else None,
        retired_pages_pending=any(s.retired_pages_pending for s in own),
        nvlink_active=_stat(s.nvlink_active for s in own),
        nvlink_links=max(links) if links else None,
    )


def nvml_unavailable_reason() -> str | None:
    """None when NVML answers; otherwise why not, in words an operator can act on."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:  # NVML missing, no driver, or driver/library mismatch
        return f"NVML unavailable: {error}"
    pynvml.nvmlShutdown()
    return None


def _read(call: Callable[[], Any]) -> Any:
    """One NVML query; None when the device does not support it (consumer GPUs lack ECC, most lack NVLink)."""
    import pynvml

    try:
        return call()
    except pynvml.NVMLError:
        return None


#: Error counters, remapped rows and the NVLink states (36 queries) change rarely: read them every Nth sample only.
SLOW_FIELDS_EVERY = 10


def read_sample(handle: Any, gpu: int, t: float, slow_fields: bool = True) -> TelemetrySample:
    import pynvml

    utilization = _read(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
    memory = _read(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
    power = _read(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
    reasons = _read(lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
    if reasons is None:  # drivers before r535 only have the older name for the same bitmask
        reasons = _read(lambda: pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))
    sample = TelemetrySample(
        t=round(t, 4),
        gpu=gpu,
        utilization_pct=utilization.gpu if utilization else None,
        memory_utilization_pct=utilization.memory if utilization else None,
        memory_used_mib=round(memory.used / (1 << 20), 1) if memory else None,
        power_w=power / 1000 if power is not None else None,
        sm_clock_mhz=_read(lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        memory_clock_mhz=_read(lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
        clock_event_reasons=reasons,
        temperature_c=_read(lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
    )
    if not slow_fields:
        return sample
    remapped = _read(lambda: pynvml.nvmlDeviceGetRemappedRows(handle))
    retired = _read(
        lambda: pynvml.nvmlDeviceGetRetiredPages(handle, pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
    )
    retired_pending = _read(lambda: pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
    link_states = [
        state
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS)
        if (state := _read(lambda link=link: pynvml.nvmlDeviceGetNvLinkState(handle, link))) is not None
    ]
    return sample.model_copy(
        update=dict(
            ecc_corrected=_read(
                lambda: pynvml.nvmlDeviceGetTotalEccErrors(
                    handle, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC
                )
            ),
            ecc_uncorrected=_read(
                lambda: pynvml.nvmlDeviceGetTotalEccErrors(
                    handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
                )
            ),
            remapped_rows_correctable=remapped[0] if remapped else None,
            remapped_rows_uncorrectable=remapped[1] if remapped else None,
            remapping_pending=bool(remapped[2]) if remapped else None,
            remapping_failed=bool(remapped[3]) if remapped else None,
            retired_pages=len(retired) if retired is not None else None,
            retired_pages_pending=bool(retired_pending) if retired_pending is not None else None,
            nvlink_active=sum(1 for s in link_states if s == pynvml.NVML_FEATURE_ENABLED) if link_states else None,
            nvlink_links=len(link_states) or None,
        )
    )


class TelemetrySampler:
    """Samples every visible GPU every `interval` seconds on a daemon thread while a `with` block runs.

    `mark()` returns the sampler clock, so a test can ask afterwards for the summary of its own window.
    When NVML cannot start, `available` is False and `note` says why; the suite runs regardless.
    """

    def __init__(self, interval: float = 0.1, gpus: list[int] | None = None) -> None:
        self.interval = interval
        self.requested = gpus
        self.samples: list[TelemetrySample] = []
        self.available = False
        self.note = ""
        self.gpus: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.perf_counter()
        self._lock = threading.Lock()

    def __enter__(self) -> TelemetrySampler:
        reason = nvml_unavailable_reason()
        if reason:
            self.note = reason
            return self
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        self.gpus = [g for g in (self.requested if self.requested is not None else range(count)) if g < count]
        handles = [(g, pynvml.nvmlDeviceGetHandleByIndex(g)) for g in self.gpus]
        self.available = True
        self.note = f"NVML: {len(handles)} GPU(s) sampled every {self.interval * 1000:.0f} ms"
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(handles,), name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self, handles: list[tuple[int, Any]]) -> None:
        count = 0
        while True:
            t = self.mark()
            slow = count % SLOW_FIELDS_EVERY == 0
            batch = [read_sample(handle, gpu, t, slow) for gpu, handle in handles]
            count += 1
            with self._lock:
                self.samples.extend(batch)
            if self._stop.wait(self.interval):
                return

    def mark(self) -> float:
        return time.perf_counter() - self._started

    def window(self, start: float, end: float) -> list[TelemetrySummary]:
        """Summaries of [start, end]; a test shorter than one period gets the nearest sample on each side."""
        if not self.available:
            return []
        with self._lock:
            samples = list(self.samples)
        inside = [s for s in samples if start <= s.t <= end]
        if not inside:
            before = [s for s in samples if s.t < start][-len(self.gpus) :]
            after = [s for s in samples if s.t > end][: len(self.gpus)]
            inside = before + after
        return [summarize(inside, gpu) for gpu in self.gpus if any(s.gpu == gpu for s in inside)]

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        # One last full reading, so error counters that rose during the final test are seen.
        import pynvml

        t = self.mark()
        with self._lock:
            self.samples.extend(read_sample(pynvml.nvmlDeviceGetHandleByIndex(g), g, t) for g in self.gpus)
        import pynvml

        pynvml.nvmlShutdown()


def store_series(samples: list[TelemetrySample], url: str, name: str) -> str:
    """Write the series as JSON lines under `url`; return the object's URL (the reference results carry)."""
    from activities.stores import join_key, open_store

    store = open_store(url)
    key = join_key("telemetry", f"{name}.jsonl")
    store.put_bytes(key, "".join(s.model_dump_json() + "\n" for s in samples).encode())
    return f"{store.url.rstrip('/')}/{key}"
