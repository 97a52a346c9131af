"""The event engine: seasonal per-edge Poisson traffic, rendered in event-time order.

Contract:
* ``Simulator(options).records(start, end)`` yields ``(fmt, cluster, ts, unit)`` for event time
  ``[start, end)``: ``fmt`` a decoder format name, ``cluster`` the cluster whose log/collector
  wrote the unit, ``ts`` the event time (float epoch s), ``unit`` the bytes (no newline).
  ``generate(start, end, **options)`` is the same as a function.
* Order: non-decreasing ``ts`` except the ``late_fraction`` of records that are delivered up to
  ``max_lateness_s`` late (their ``ts`` is unchanged, their place in the stream is later).
  ``malformed_fraction`` of units are corrupted (truncated, not UTF-8, not the format) to exercise
  dead letters; their ``ts`` is still the event time they would have had.
* Determinism: each ``chunk_s`` of event time draws from its own ``numpy`` Generator seeded with
  ``(seed, chunk index)``, so the output for a seed, start and options is byte-identical and any
  chunk-aligned sub-span reproduces the corresponding part of a longer run.
* Rates: ``Edge.rate`` x seasonal factor (hour of day in the caller cluster's time zone, weekend
  dip) x ``rate_multiplier`` x scenario modifiers. The default mesh averages roughly 15 req/s.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from detector.simulation.scenarios import Modifier, Scenario
from detector.simulation.topology import INF, ApiClient, Mesh, Route, build_mesh
from detector.simulation.writers import (
    Req,
    audit_event,
    envoy_fields,
    envoy_outbound_tls_fields,
    fast_template,
    hubble_flow,
    otlp_trace,
    render_fields,
    route_path,
)

Record = tuple[str, str, float, bytes]
_Template = tuple["Callable[..., str]", bool, str, str]  # render, has {id}, format, cluster

# Outcome codes; the first three are rendered by the fast template path.
OK, ERR, APP401, RBAC, JWT, NR, TLS, UF = range(8)
_P_COLS: Final = ("p_error", "p_app401", "p_rbac", "p_jwt", "p_nr", "p_tls", "p_uf")
_P_CODES: Final = (ERR, APP401, RBAC, JWT, NR, TLS, UF)
_JWT_REASONS: Final = ("Jwt_is_missing", "Jwt_verification_fails", "Jwt_is_expired")
_MS: Final = tuple(f".{i:03d}Z" for i in range(1000))
_HEX: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_POS: Final = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])
_GARBAGE: Final = (b"\xff\xfe\x00garbage", b"<html><body>502 Bad Gateway</body></html>",
                   b"{\"start_time\":")  # fmt: skip

DEFAULT_FORMATS: Final = ("envoy_json", "envoy_text", "k8s_audit")


@dataclass(slots=True)
class SimOptions:
    seed: int = 7
    topology_seed: int = 1
    formats: tuple[str, ...] = DEFAULT_FORMATS  # also "hubble", "otlp_proto_traces"
    scenarios: Sequence[Scenario] = ()
    rate_multiplier: float = 1.0
    text_share: float = 0.1  # share of services whose sidecars log Istio text instead of JSON
    hubble_share: float = 0.05  # share of requests that also yield a Hubble L3/L4 flow
    otlp_share: float = 0.02  # share of requests that also yield an OTLP trace export
    late_fraction: float = 0.0
    max_lateness_s: float = 30.0
    malformed_fraction: float = 0.0
    chunk_s: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)


def season(t: float, tz_offset_h: float, weekend_factor: float, business_hours: bool) -> float:
    """Traffic factor (0.15..1) at epoch ``t``: low at 04:00 local, peak at 16:00."""
    local = t / 3600.0 + tz_offset_h
    h = local % 24.0
    dow = int((local // 24.0 + 3) % 7)  # 1970-01-01 was a Thursday; Monday = 0
    if business_hours:
        f = 0.05 + 0.95 * (1.0 / (1.0 + math.exp(-3.0 * (h - 8.5)))) * (
            1.0 / (1.0 + math.exp(3.0 * (h - 18.0)))
        )
    else:
        f = 0.15 + 0.85 * ((1.0 - math.cos(2.0 * math.pi * (h - 4.0) / 24.0)) / 2.0) ** 1.5
    return f * (weekend_factor if dow >= 5 else 1.0)


def _stable(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")


class Simulator:
    """Compiled mesh + scenarios; ``records`` renders any event-time span."""

    def __init__(self, options: SimOptions | None = None, mesh: Mesh | None = None) -> None:
        self.o = o = options or SimOptions()
        self.mesh = mesh or build_mesh(o.topology_seed)
        self.mods: list[Modifier] = []
        for s in o.scenarios:
            self.mods.extend(s.apply(self.mesh))
        self.formats = frozenset(o.formats)
        self._compile()

    # Compilation: per-edge numpy arrays, so each chunk is a handful of vector operations.
    def _compile(self) -> None:
        m = self.mesh
        edges = self.edges = list(m.edges)
        n = len(edges)
        cl = list(m.clusters)
        self.cluster_names = cl
        # Services a scenario may involve always log JSON, with or without scenarios active:
        # a training span must log them the same way as the test span it is compared with.
        pinned = {svc for s in self.o.scenarios for svc in s.services}
        pinned |= _scenario_services(self.o.topology_seed)
        svc_keys = sorted({e.dst.key for e in edges}, key=_stable)
        n_text = round(self.o.text_share * len(svc_keys))
        text_keys = set([k for k in svc_keys if k not in pinned][:n_text])
        text_ok = "envoy_text" in self.formats
        self.fmt = [
            e.fmt or ("envoy_text" if text_ok and e.dst.key in text_keys else "envoy_json")
            for e in edges
        ]
        self.rate = np.array([e.rate for e in edges])
        self.seasonal = np.array([e.seasonal for e in edges])
        self.cidx = np.array([cl.index(e.src.cluster) for e in edges])
        self.win = np.array([e.window for e in edges], dtype=float).reshape(n, 2)
        self.p = np.array([[getattr(e, c) for c in _P_COLS] for e in edges]).reshape(n, -1)
        self.routes: list[tuple[Route, ...]] = []
        rmax = 1
        for e in edges:
            rs = e.routes or tuple(
                e.dst.svc.routes[i] for i in (e.route_idx or range(len(e.dst.svc.routes)))
            )
            self.routes.append(rs or (Route("GET", "/", 1.0, 6.0, 0),))
            rmax = max(rmax, len(self.routes[-1]))
        self.rcum = np.ones((n, rmax))
        self.out_mu = np.full((n, rmax), 6.0)
        self.in_mu = np.zeros((n, rmax))
        self.has_id = np.zeros((n, rmax), dtype=bool)
        for i, rs in enumerate(self.routes):
            w = np.array([r.weight for r in rs])
            self.rcum[i, : len(rs)] = np.cumsum(w) / w.sum()
            self.out_mu[i, : len(rs)] = [r.out_mu for r in rs]
            self.in_mu[i, : len(rs)] = [r.in_mu for r in rs]
            self.has_id[i, : len(rs)] = ["{id}" in r.template for r in rs]
        self.rcum[:, -1] = 1.0
        self.lat_mu = np.array([e.dst.svc.lat_mu for e in edges])
        # Pod IPs: one flat list; each edge gets offsets into it for its caller and callee pods.
        ips: list[str] = []
        index: dict[str, int] = {}

        def ip_id(ip: str) -> int:
            if ip not in index:
                index[ip] = len(ips)
                ips.append(ip)
            return index[ip]

        self.src_ips: list[list[int]] = []
        self.dst_ips: list[list[int]] = []
        for e in edges:
            self.src_ips.append([ip_id(e.src_ip)] if e.src_ip else [ip_id(x) for x in e.src.ips])
            self.dst_ips.append([ip_id(x) for x in e.dst.ips])
        self.ips = ips
        self.n_src = np.array([len(x) for x in self.src_ips])
        self.n_dst = np.array([len(x) for x in self.dst_ips])
        smax = int(self.n_src.max()) if n else 1
        dmax = int(self.n_dst.max()) if n else 1
        self.src_tab = np.zeros((n, smax), dtype=np.int64)
        self.dst_tab = np.zeros((n, dmax), dtype=np.int64)
        for i in range(n):
            self.src_tab[i, : len(self.src_ips[i])] = self.src_ips[i]
            self.dst_tab[i, : len(self.dst_ips[i])] = self.dst_ips[i]
        # x_forwarded_for fragments: 0 = JSON null, 1 = text "-", then each outside address.
        self.xff_pool: list[str] = ["null", '"-"']
        self.xff_base = np.zeros(n, dtype=np.int64)
        self.xff_n = np.zeros(n, dtype=np.int64)
        for i, e in enumerate(edges):
            if e.xff:
                self.xff_base[i] = len(self.xff_pool)
                self.xff_n[i] = len(e.xff)
                self.xff_pool.extend(f'"{a}"' for a in e.xff)
            else:
                self.xff_base[i] = 1 if self.fmt[i] == "envoy_text" else 0
        self.mod_ids = [
            None if md.edges is None else np.array([id(e) in md.edges for e in edges])
            for md in self.mods
        ]
        self.templates: list[_Template | None] = [None] * (n * rmax)
        self.clients: list[ApiClient] = list(m.api_clients)
        self.c_rate = np.array([c.rate for c in self.clients])
        self.c_cum = [
            (np.cumsum([a.weight for a in c.actions]) / sum(a.weight for a in c.actions)).tolist()
            for c in self.clients
        ]
        self.c_win = np.array([c.window for c in self.clients], dtype=float).reshape(-1, 2)

    def _season(self, t: float) -> np.ndarray:
        return np.array([
            season(t, c.tz_offset_h, c.weekend_factor, c.name == "staging")
            for c in self.mesh.clusters.values()
        ])  # fmt: skip

    # Generation.
    def records(self, start: float, end: float) -> Iterator[Record]:
        """Records of event time ``[start, end)``; see the module docstring."""
        cs = self.o.chunk_s
        pending: list[tuple[float, int, Record]] = []
        may_be_late = self.o.late_fraction > 0
        k = math.floor(start / cs)
        while True:
            t0 = max(start, k * cs)
            if t0 >= end:
                break
            t1 = min(end, (k + 1) * cs)
            items = self._chunk(k, t0, t1)
            if pending:
                items.extend(pending)
                items.sort(key=_key)
                pending = []
            if may_be_late and t1 < end:
                # Late records whose delivery time falls in a later chunk wait for it.
                cut = bisect.bisect_left(items, t1, key=_emit)
                pending = items[cut:]
                del items[cut:]
            yield from map(_record, items)
            k += 1

    def _chunk(self, k: int, t0: float, t1: float) -> list[tuple[float, int, Record]]:
        o = self.o
        rng = np.random.default_rng([o.seed, k & 0xFFFFFFFF, k >> 32])
        dt = t1 - t0
        mid = 0.5 * (t0 + t1)
        n_e = len(self.edges)
        s = self._season(mid)[self.cidx]
        lam = self.rate * np.where(self.seasonal, s, 1.0) * o.rate_multiplier
        overlap = np.clip(np.minimum(self.win[:, 1], t1) - np.maximum(self.win[:, 0], t0), 0, dt)
        lam = lam * overlap
        bytes_f = np.ones(n_e)
        lat_f = np.ones(n_e)
        p = self.p
        for md, mask in zip(self.mods, self.mod_ids, strict=True):
            if md.end <= t0 or md.start >= t1:
                continue
            sel = np.ones(n_e, dtype=bool) if mask is None else mask.copy()
            if md.seasonal_only:
                sel &= self.seasonal
            f = md.rate_factor
            if md.ramp_to is not None:
                f *= 1.0 + (md.ramp_to - 1.0) * min(1.0, max(0.0, (mid - md.start)) /
                                                    (md.end - md.start))  # fmt: skip
            frac = (min(md.end, t1) - max(md.start, t0)) / dt  # partial overlap with the chunk
            lam = np.where(sel, lam * (1.0 + (f - 1.0) * frac), lam)
            bytes_f = np.where(sel, bytes_f * md.bytes_out_factor, bytes_f)
            lat_f = np.where(sel, lat_f * md.latency_factor, lat_f)
            if md.p_uf is not None:
                p = p.copy()
                p[sel, -1] = md.p_uf
        counts = rng.poisson(lam)
        eid = np.repeat(np.arange(n_e), counts)
        n = len(eid)
        # Every draw below happens whatever the formats, so formats do not change the traffic.
        ts = t0 + rng.random(n) * dt
        w = self.win[eid]
        keep = (ts >= w[:, 0]) & (ts < w[:, 1])
        u_route = rng.random(n)
        u_out = rng.random(n)
        z = rng.standard_normal((n, 3))
        ident = rng.integers(1000, 99_999, n)
        pods = rng.integers(0, 1 << 30, (n, 2))
        ports = rng.integers(32_768, 61_000, (n, 2))
        u_misc = rng.random((n, 5))  # late, malformed, hubble, otlp, 404
        delay = rng.random(n) * o.max_lateness_s
        raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
        xffi = rng.integers(0, 1 << 30, n)
        # Audit events.
        audit = self._audit(rng, t0, t1)

        route = (u_route[:, None] > self.rcum[eid]).sum(axis=1)
        route = np.minimum(route, self.rcum.shape[1] - 1)
        pc = np.cumsum(p[eid], axis=1)
        oc_i = (u_out[:, None] >= pc).sum(axis=1)
        codes_tab = np.array((*_P_CODES, OK))
        outc = codes_tab[oc_i]
        get_id = self.has_id[eid, route]
        code = np.full(n, 200)
        code[outc == ERR] = 500
        code[outc == APP401] = 401
        code[outc == RBAC] = 403
        code[outc == JWT] = 401
        code[(outc == UF) | (outc == TLS)] = 503
        code[outc == NR] = 0
        code[(outc == OK) & get_id & (u_misc[:, 4] < 0.01)] = 404
        dur = np.exp(self.lat_mu[eid] + 0.55 * z[:, 0]) * lat_f[eid]
        dur_i = np.maximum(dur, 0).astype(np.int64)
        ust = np.maximum(dur_i - 1, 0)
        bo = (np.exp(self.out_mu[eid, route] + 0.6 * z[:, 1]) * bytes_f[eid]).astype(np.int64)
        small = code != 200
        bo[small] = (40 + (np.abs(z[small, 1]) * 30)).astype(np.int64)
        in_mu = self.in_mu[eid, route]
        bi = np.where(in_mu > 0, np.exp(in_mu + 0.5 * z[:, 2]), 0).astype(np.int64)
        src_ip = self.src_tab[eid, pods[:, 0] % self.n_src[eid]]
        dst_ip = self.dst_tab[eid, pods[:, 1] % self.n_dst[eid]]
        xff = np.where(self.xff_n[eid] > 0, self.xff_base[eid] + xffi % np.maximum(
            self.xff_n[eid], 1), self.xff_base[eid])  # fmt: skip
        # Request ids: UUIDv4 text, built for the whole chunk at once.
        raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
        raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
        hexd = np.empty((n, 32), dtype=np.uint8)
        hexd[:, 0::2] = _HEX[raw >> 4]
        hexd[:, 1::2] = _HEX[raw & 0x0F]
        uu = np.full((n, 36), ord("-"), dtype=np.uint8)
        uu[:, _UUID_POS] = hexd
        uuid_text = uu.tobytes().decode("ascii")
        late = u_misc[:, 0] < o.late_fraction
        emit = np.where(late, ts + delay, ts)
        order = np.argsort(emit, kind="stable")
        order = order[keep[order]]
        secs = np.floor(ts).astype(np.int64)
        ms = ((ts - secs) * 1000).astype(np.int64)
        hub = (u_misc[:, 2] < o.hubble_share) if "hubble" in self.formats else np.zeros(n, bool)
        otl = (
            (u_misc[:, 3] < o.otlp_share)
            if "otlp_proto_traces" in self.formats
            else np.zeros(n, bool)
        )
        out = self._render(
            order, eid, route, outc, code, ident, bi, bo, dur_i, ust, xff, uuid_text, dst_ip,
            ports, src_ip, secs, ms, emit, ts,
        )  # fmt: skip
        extras = np.flatnonzero(keep & (hub | otl | (outc >= RBAC)))
        if len(extras):
            out.extend(self._extras(extras, eid, route, outc, code, ident, bi, bo, dur_i,
                                    uuid_text, dst_ip, ports, src_ip, secs, ms, ts, emit,
                                    hub, otl, raw, xff))  # fmt: skip
        if len(audit) or len(extras):
            out.extend(audit)
            out.sort(key=_key)  # runs of sorted items: timsort merges them in linear time
        if o.malformed_fraction > 0:
            # Drawn last, by position in the sorted chunk, so corruption never shifts the traffic.
            bad = np.flatnonzero(rng.random(len(out)) < o.malformed_fraction)
            kinds = rng.integers(0, 4, len(bad))
            for j, kind in zip(bad.tolist(), kinds.tolist(), strict=True):
                em, sq, (fm, cl, tt, unit) = out[j]
                if kind == 0:
                    unit = unit[: max(1, len(unit) // 2)]  # truncated by a log shipper
                elif kind == 3:
                    unit = b"\xff" + unit[1:]  # not UTF-8
                else:
                    unit = _GARBAGE[kind - 1 + (j % 2)]
                out[j] = (em, sq, (fm, cl, tt, unit))
        return out

    def _render(
        self, order: np.ndarray, eid: np.ndarray, route: np.ndarray, outc: np.ndarray,
        code: np.ndarray, ident: np.ndarray, bi: np.ndarray, bo: np.ndarray, dur: np.ndarray,
        ust: np.ndarray, xff: np.ndarray, uuid_text: str, dst_ip: np.ndarray, ports: np.ndarray,
        src_ip: np.ndarray, secs: np.ndarray, ms: np.ndarray, emit: np.ndarray, ts: np.ndarray,
    ) -> list[tuple[float, int, Record]]:  # fmt: skip
        """The hot loop: access-log lines of ok/app-error requests via %-templates."""
        fast = order[outc[order] <= APP401]
        if not len(fast):
            return []
        key = eid * self.rcum.shape[1] + route
        cols = [a[fast].tolist() for a in (key, ident, code, bi, bo, dur, ust, xff, dst_ip,
                                           ports[:, 1], src_ip, ports[:, 0], secs, ms, emit,
                                           ts)]  # fmt: skip
        cols.append(fast.tolist())
        templates = self.templates
        tmpl_of = self._template
        ips = self.ips
        xp = self.xff_pool
        sec_cache: dict[int, str] = {}
        ms_s = _MS
        out: list[tuple[float, int, Record]] = []
        append = out.append
        for k, idv, c, b_in, b_out, d, u, xi, hi, lp, si, sp, sec, m, em, t, j in zip(
            *cols, strict=True
        ):
            tk = templates[k]
            if tk is None:
                tk = tmpl_of(k)
            fn, has_id, fmt, cluster = tk
            pre = sec_cache.get(sec)
            if pre is None:
                pre = sec_cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            h = ips[hi]
            rid = uuid_text[36 * j : 36 * j + 36]
            if has_id:
                line = fn(pre + ms_s[m], idv, c, b_in, b_out, d, u, xp[xi], rid, h, lp, h,
                          ips[si], sp)  # fmt: skip
            else:
                line = fn(pre + ms_s[m], c, b_in, b_out, d, u, xp[xi], rid, h, lp, h, ips[si], sp)
            append((em, j, (fmt, cluster, t, line.encode())))
        return out

    def _template(self, k: int) -> _Template:
        e, r = divmod(k, self.rcum.shape[1])
        tmpl, has_id = fast_template(self.edges[e], self.routes[e][r], self.fmt[e])
        tk = (compile_template(tmpl), has_id, self.fmt[e], self.edges[e].dst.cluster)
        self.templates[k] = tk
        return tk

    def _extras(
        self, idx: np.ndarray, eid: np.ndarray, route: np.ndarray, outc: np.ndarray,
        code: np.ndarray, ident: np.ndarray, bi: np.ndarray, bo: np.ndarray, dur: np.ndarray,
        uuid_text: str, dst_ip: np.ndarray, ports: np.ndarray, src_ip: np.ndarray,
        secs: np.ndarray, ms: np.ndarray, ts: np.ndarray, emit: np.ndarray, hub: np.ndarray,
        otl: np.ndarray, raw: np.ndarray, xff: np.ndarray,
    ) -> list[tuple[float, int, Record]]:  # fmt: skip
        """Slow path: auth failures and other local replies, Hubble flows, OTLP traces."""
        out: list[tuple[float, int, Record]] = []
        for j in idx.tolist():
            e = self.edges[int(eid[j])]
            ei = int(eid[j])
            rt = self.routes[ei][int(route[j])]
            o = int(outc[j])
            t = float(ts[j])
            em = float(emit[j])
            start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(secs[j]))) + _MS[int(ms[j])]
            rid = uuid_text[36 * j : 36 * j + 36]
            sip, dip = self.ips[int(src_ip[j])], self.ips[int(dst_ip[j])]
            sport = int(ports[j, 0])
            path = route_path(rt, int(ident[j]))
            if o >= RBAC:
                x = self.xff_pool[int(xff[j])]
                req = Req(start, path, 0, int(bi[j]), 0, 0, None,
                          x.strip('"') if x.startswith('"') and x != '"-"' else None, rid, dip,
                          int(ports[j, 1]), sip, sport)  # fmt: skip
                fmt = self.fmt[ei]
                cluster = e.dst.cluster
                if o == RBAC:
                    pol = (
                        "none"
                        if _stable(e.dst.key) % 10 < 3
                        else (f"ns[{e.dst.namespace}]-policy[deny-untrusted-callers]-rule[0]")
                    )
                    req.code, req.details, req.bytes_out = (
                        403,
                        (f"rbac_access_denied_matched_policy[{pol}]"),
                        19,
                    )
                    req.bytes_in = 0
                elif o == JWT:
                    why = _JWT_REASONS[j % 3]
                    req.code, req.details = 401, f"jwt_authn_access_denied{{{why}}}"
                    req.bytes_out = len(why.replace("_", " "))
                elif o == NR:
                    req.code, req.flags, req.details, req.bytes_in = (
                        0,
                        "NR",
                        ("filter_chain_not_found"),
                        0,
                    )
                elif o == UF:
                    req.code, req.flags = 503, "UF"
                    req.details = "upstream_reset_before_response_started{connection_failure}"
                    req.bytes_out, req.duration = 91, int(dur[j])
                if o == TLS:
                    req.duration = int(dur[j]) % 20
                    fields = envoy_outbound_tls_fields(e, rt, req)
                    cluster = e.src.cluster
                else:
                    fields = envoy_fields(e, rt, req)
                unit = render_fields(fields, fmt)
                out.append((em, j, (fmt, cluster, t, unit)))
            if hub[j]:
                tns = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(secs[j]))) + (
                    f".{int((t % 1) * 1e9):09d}Z"
                )
                unit = hubble_flow(e, tns, sip, sport, dip, dropped=o == NR)
                out.append((em, j, ("hubble", e.dst.cluster, t, unit)))
            if otl[j] and o not in (NR, TLS):
                unit = otlp_trace(
                    e, rt, path, int(code[j]), int(t * 1e9),
                    int(dur[j]) * 1_000_000, raw[j].tobytes(), raw[j, :8].tobytes()[::-1],
                    raw[j, 8:].tobytes(), dip,
                )  # fmt: skip
                out.append((em, j, ("otlp_proto_traces", e.dst.cluster, t, unit)))
        return out

    def _audit(
        self, rng: np.random.Generator, t0: float, t1: float
    ) -> list[tuple[float, int, Record]]:
        nc = len(self.clients)
        if nc == 0:
            return []
        dt = t1 - t0
        overlap = np.clip(np.minimum(self.c_win[:, 1], t1) - np.maximum(self.c_win[:, 0], t0),
                          0, dt)  # fmt: skip
        counts = rng.poisson(self.c_rate * overlap)  # API traffic does not follow the mesh's
        cid = np.repeat(np.arange(nc), counts)
        n = len(cid)
        ts = t0 + rng.random(n) * dt
        u = rng.random((n, 2))
        lat = rng.integers(800, 60_000, n)
        ids = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16)
        if "k8s_audit" not in self.formats:
            return []
        out: list[tuple[float, int, Record]] = []
        for j in range(n):
            c = self.clients[int(cid[j])]
            t = float(ts[j])
            if not c.window[0] <= t < c.window[1]:
                continue
            a = c.actions[min(bisect.bisect_left(self.c_cum[int(cid[j])], u[j, 0]),
                              len(c.actions) - 1)]  # fmt: skip
            outcome = (
                "unauth"
                if u[j, 1] < c.p_unauth
                else ("forbid" if u[j, 1] < c.p_unauth + c.p_forbid else "allow")
            )
            h = ids[j].tobytes().hex()
            aid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
            start = _micro(t)
            end = _micro(t + int(lat[j]) / 1e6)
            unit = audit_event(c, a, start, end, aid, outcome)
            out.append((t, 1 << 40 | j, ("k8s_audit", c.cluster, t, unit)))
        return out


def compile_template(tmpl: str) -> Callable[..., str]:
    """A function equal to ``tmpl % args`` for a template of bare ``%s`` (``%%`` escaped).

    An f-string of alternating constants and arguments runs about twice as fast as ``%`` on a
    1 kB line, which is most of the generator's budget. Only names are put into the generated
    source; the constant pieces are bound as default arguments, never spliced in as code.
    """
    parts = [p.replace("%%", "%") for p in tmpl.split("%s")]
    names = [f"a{i}" for i in range(len(parts) - 1)]
    consts = ", ".join(f"s{i}=S[{i}]" for i in range(len(parts)))
    body = "".join(
        f"{{s{i}}}" + (f"{{{names[i]}}}" if i < len(names) else "") for i in range(len(parts))
    )
    sig = ", ".join([*names, consts])
    fn: Callable[..., str] = eval(f"lambda {sig}: f'{body}'", {"S": parts})
    return fn


def _micro(t: float) -> str:
    sec = math.floor(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{int((t - sec) * 1e6):06d}Z"


_emit = operator.itemgetter(0)
_record = operator.itemgetter(2)


def _key(it: tuple[float, int, Record]) -> tuple[float, int]:
    return (it[0], it[1])


def generate(start: float, end: float, **options: Any) -> Iterator[Record]:
    """``Simulator(SimOptions(**options)).records(start, end)``."""
    return Simulator(SimOptions(**options)).records(start, end)


__all__ = ["INF", "SimOptions", "Simulator", "generate", "season"]


@functools.lru_cache(maxsize=4)
def _scenario_services(topology_seed: int) -> frozenset[str]:
    """Every service the default scenarios touch, on a throwaway copy of the mesh."""
    from detector.simulation.scenarios import default_scenarios

    mesh = build_mesh(topology_seed)
    out: set[str] = set()
    for sc in default_scenarios(0.0, 36_000.0):
        sc.apply(mesh)
        out.update(sc.services)
    return frozenset(out)
