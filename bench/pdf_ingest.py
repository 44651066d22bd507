"""A 500-page PDF of real text through a node's gRPC `Ingest` as bytes, on the Raspberry Pi 4 profile.

Makes the PDF with fpdf2 from real English text on this machine (Debian's /usr/share/doc: copyright
files, READMEs, changelogs), 55 lines a page, then starts `edgefleet-node serve --profile rpi4-4gb`
(its threads, context and memory budget; the profile's embedder, wordllama) on a fresh data
folder and sends the file's bytes in one `Ingest` (format sniffed: the node reads the PDF with
plumbing/document_text.py, as the CLI does). It prints

  - the PDF (pages, bytes, text bytes) and the time reading its text layer takes in this process,
  - whether the node's default EDGEFLEET_MAX_DOCUMENT_BYTES takes it (and the refusal if not),
  - with `--max-document-bytes` (default 8 MiB): Ingest wall time, chunks, the node's RSS before
    and its peak during the ingest (polled every 50 ms, and the kernel's VmHWM) against the
    profile's [memory] budget_mb, and the knowledge database's size on disk.

    .venv/bin/python -m bench.pdf_ingest [--pages 500] [--max-document-bytes N] [--keep DIR]

Not a Pi: the times are this machine's CPU with the profile's settings; memory and database size
carry over.
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "rpi4-4gb"
LINES_PER_PAGE = 55
LINE_CHARS = 95
MIB = 1024 * 1024


def real_text(root: Path = Path("/usr/share/doc")) -> Iterator[tuple[str, str]]:
    """(title, text) of the documentation files on this machine, in a fixed order."""
    for path in sorted(root.rglob("*")):
        name = path.name.lower()
        if not path.is_file() or path.is_symlink():
            continue
        try:
            if name == "copyright" or (name.startswith("readme") and not name.endswith((".gz", ".html"))):
                raw = path.read_bytes()
            elif name in ("changelog.gz", "changelog.debian.gz", "news.debian.gz", "readme.debian.gz"):
                raw = gzip.decompress(path.read_bytes())
            else:
                continue
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        text = raw.decode("utf-8", errors="replace")
        if text.strip():
            yield str(path.relative_to(root)), text


def page_lines(pages: int) -> list[list[str]]:
    """`pages` pages of wrapped lines, each source starting with its path as a title line."""
    out: list[list[str]] = [[]]
    for title, text in real_text():
        lines = [f"== {title} ==", ""]
        for para in text.splitlines():
            lines += textwrap.wrap(para, LINE_CHARS) or [""]
        for line in lines:
            if len(out[-1]) == LINES_PER_PAGE:
                if len(out) == pages:
                    return out
                out.append([])
            out[-1].append(line.encode("latin-1", errors="replace").decode("latin-1"))  # the core font's set
    raise SystemExit(f"not enough text under /usr/share/doc for {pages} pages (got {len(out)})")


def make_pdf(pages: int) -> bytes:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_font("helvetica", size=8)
    for lines in page_lines(pages):
        pdf.add_page()
        for i, line in enumerate(lines):
            pdf.text(12, 14 + i * 5, line)
    return bytes(pdf.output())


def node_rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def db_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("knowledge.db*"))


@dataclass(frozen=True)
class Figures:
    seconds: float
    chunks: int
    rss_before: int
    rss_peak: int
    vm_hwm: int
    db_running: int
    page_of_top_hit: str


def ingest_on_node(pdf: bytes, data_dir: Path, env: dict[str, str]) -> Figures | str:
    """Figures, or the node's refusal."""
    """Start the node on the profile, send one Ingest with the PDF's bytes; the figures."""
    import grpc

    from bench.processes import RssMonitor, free_port, stop_process
    from edgefleet.proto.v1 import inference_pb2 as pb
    from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

    port = free_port()
    cmd = [str(ROOT / ".venv/bin/edgefleet-node"), "serve", "--profile", PROFILE, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--data-dir", str(data_dir), "--node-id", "bench-pdf"]
    full_env = {**os.environ, "EDGEFLEET_LOG_LEVEL": "WARNING", "EDGEFLEET_INSECURE": "1", **env}
    log = (data_dir.parent / f"{data_dir.name}.log").open("wb")
    proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=log, start_new_session=True)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * MIB)])
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = pb_grpc.InferenceStub(channel)
        stub.ListCollections(pb.ListCollectionsRequest(), timeout=30)  # serving, knowledge store open
        before, _ = node_rss(proc.pid)
        monitor = RssMonitor(proc.pid).start()
        t0 = time.perf_counter()
        try:
            r = stub.Ingest(
                pb.IngestRequest(collection="manual", documents=[pb.Document(id="manuals/big.pdf", data=pdf)]),
                timeout=3600,
            )
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"
        finally:
            seconds = time.perf_counter() - t0
            monitor.stop()
        _, hwm = node_rss(proc.pid)
        hit = stub.Retrieve(pb.RetrieveRequest(query="copyright license", collection="manual", top_k=1), timeout=60)
        channel.close()
        return Figures(
            seconds,
            r.chunks,
            before,
            monitor.peak,
            hwm,
            db_bytes(data_dir),
            hit.chunks[0].metadata.get("page", "-") if hit.chunks else "-",
        )
    finally:
        stop_process(proc, 30)
        log.close()


def db_sizes(data_dir: Path) -> str:
    """The knowledge database's files once the node has stopped (its WAL checkpointed)."""
    files = {p.name: p.stat().st_size for p in sorted(data_dir.glob("knowledge.db*"))}
    return ", ".join(f"{name} {size / MIB:.1f} MiB" for name, size in files.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pages", type=int, default=500)
    ap.add_argument("--max-document-bytes", type=int, default=8 * MIB)
    ap.add_argument("--keep", type=Path, help="write the PDF and node data here (default: a temporary folder)")
    args = ap.parse_args(argv)
    from edgefleet.plumbing.document_text import document_text

    profile = tomllib.loads((ROOT / "firmware_profiles" / f"{PROFILE}.toml").read_text())
    budget_mib = profile["memory"]["budget_mb"]
    t0 = time.perf_counter()
    pdf = make_pdf(args.pages)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    text = document_text(pdf, "pdf", name="big.pdf")
    read = time.perf_counter() - t0
    text_bytes = len(text.text.encode("utf-8"))
    print(f"profile {PROFILE}: threads {profile['compute']['threads']}, memory budget {budget_mib} MiB")
    print(f"host: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(
        f"PDF: {text.pages} pages, {len(pdf) / MIB:.2f} MiB, text layer {text_bytes / MIB:.2f} MiB "
        f"(made in {made:.1f} s; read with pypdf in {read:.1f} s)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "big.pdf").write_bytes(pdf)
        message = {"EDGEFLEET_MAX_MESSAGE_BYTES": str(max(4 * MIB, len(pdf) + MIB))}
        default = ingest_on_node(pdf, work / "data-default", message)
        refusal = default if isinstance(default, str) else "accepted"
        print(f"node defaults (EDGEFLEET_MAX_DOCUMENT_BYTES 1 MiB): {refusal}")
        env = {**message, "EDGEFLEET_MAX_DOCUMENT_BYTES": str(args.max_document_bytes)}
        got = ingest_on_node(pdf, work / "data", env)
        if isinstance(got, str):
            print(f"EDGEFLEET_MAX_DOCUMENT_BYTES={args.max_document_bytes}: refused: {got}")
            return 1
        before, peak, hwm = got.rss_before / MIB, got.rss_peak / MIB, got.vm_hwm / MIB
        print(
            f"EDGEFLEET_MAX_DOCUMENT_BYTES={args.max_document_bytes}: Ingest {got.seconds:.1f} s, "
            f"{got.chunks} chunks ({args.pages / got.seconds:.1f} pages/s)"
        )
        print(
            f"node RSS: {before:.0f} MiB before, peak {peak:.0f} MiB during (+{peak - before:.0f} MiB; "
            f"VmHWM {hwm:.0f} MiB), budget {budget_mib} MiB: {'within' if hwm <= budget_mib else 'OVER'}"
        )
        print(
            f"knowledge database: {got.db_running / MIB:.1f} MiB with the node running, "
            f"after it stopped: {db_sizes(work / 'data')}"
        )
        print(f"top hit for 'copyright license': page {got.page_of_top_hit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
