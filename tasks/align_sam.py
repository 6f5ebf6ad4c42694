"""SAM records of mappy hits, as minimap2's own writer (`mm_write_sam3`) makes them.

Flags for pairing, strand, mate strand, first/second, secondary (0x100) and
supplementary (0x800, hard-clipped like minimap2 without -Y); RNEXT/PNEXT from the mate's
primary alignment; TLEN between the 5' ends; soft clips for the unaligned ends; NM, MD
and RG tags. An unmapped read whose mate is mapped takes the mate's position, as the SAM
spec recommends. Used by the alignment kernel, `tasks.align_map`.
"""

from __future__ import annotations

from typing import Any

import mappy

_RC = str.maketrans("ACGTNacgtnRYSWKMBDHVU", "TGCANtgcanYRSWMKVHDBA")
FLAG_PAIRED, FLAG_PROPER, FLAG_UNMAP, FLAG_MUNMAP = 0x1, 0x2, 0x4, 0x8
FLAG_REV, FLAG_MREV, FLAG_R1, FLAG_R2 = 0x10, 0x20, 0x40, 0x80
FLAG_SECONDARY, FLAG_SUPPLEMENTARY = 0x100, 0x800

class Mate2Hit:
    """A mate-2 hit of a paired `Aligner.map` with its query interval and MD repaired.

    mappy (2.31, cmappy.h `mm_map_aux`) maps mate 2 reverse-complemented and flips the
    hit's strand back, but not `q_st`/`q_en`, and builds the MD tag from those unflipped
    coordinates. Both are wrong whenever the two ends are clipped differently; minimap2's
    own writer flips them (map.c). This copies the hit with `q_st`/`q_en` flipped and the
    MD recomputed from the reference and the CIGAR.
    """

    __slots__ = ("MD", "NM", "cigar", "cigar_str", "ctg", "is_primary", "mapq", "q_en", "q_st",
                 "r_en", "r_st", "read_num", "strand")

    def __init__(self, hit: Any, n: int, seq: str, aligner: mappy.Aligner) -> None:
        self.ctg, self.r_st, self.r_en, self.strand = hit.ctg, hit.r_st, hit.r_en, hit.strand
        self.q_st, self.q_en = n - hit.q_en, n - hit.q_st
        self.mapq, self.cigar, self.cigar_str, self.NM = hit.mapq, hit.cigar, hit.cigar_str, hit.NM
        self.is_primary, self.read_num = hit.is_primary, hit.read_num
        if self.strand < 0:  # the aligned span on the reverse complement
            span = seq.translate(_RC)[::-1][n - self.q_en:n - self.q_st]
        else:
            span = seq[self.q_st:self.q_en]
        self.MD = md_tag(aligner.seq(self.ctg, self.r_st, self.r_en) or "", span, hit.cigar)


def md_tag(ref: str, query: str, cigar: list[list[int]]) -> str:
    """SAM MD tag of an alignment: `ref` and `query` are the aligned spans (no clips),
    `cigar` the (length, op) pairs with M/I/D/N ops as mappy gives them.

    Args:
        ref: the reference bases of the aligned span (any case; mismatches are upper-cased).
        query: the read bases of the aligned span, soft clips removed.
        cigar: (length, op) pairs as mappy's `Alignment.cigar`; ops 0/7/8 (M, =, X), 1 (I),
            2 (D) and 3 (N) are read.

    Returns:
        The MD:Z value, e.g. "2G0^T4".

    Example:
        >>> md_tag("ACGTACGT", "ACCACGT", [[3, 0], [1, 2], [4, 0]])
        '2G0^T4'
    """
    parts: list[str] = []
    run = r = q = 0
    for length, op in cigar:
        if op in (0, 7, 8):  # M, =, X
            for k in range(length):
                if ref[r + k].upper() == query[q + k].upper():
                    run += 1
                else:
                    parts.append(f"{run}{ref[r + k].upper()}")
                    run = 0
            r += length
            q += length
        elif op == 1:  # insertion: not in MD
            q += length
        elif op in (2, 3):  # deletion (and skip, which MD does not show)
            if op == 2:
                parts.append(f"{run}^{ref[r:r + length].upper()}")
                run = 0
            r += length
    parts.append(str(run))
    return "".join(parts)


def classify_hits(hits: list[Any]) -> tuple[Any, list[tuple[Any, int]]]:
    """Primary hit (or None) and the others with their flag bit, as minimap2 decides.

    mappy's `is_primary` means "not secondary": the first such hit is the primary, the
    later ones are supplementary (minimap2's mm_set_sam_pri).
    """
    if len(hits) == 1 and hits[0].is_primary:  # the usual case for short reads
        return hits[0], []
    primary, others = None, []
    for hit in hits:
        if not hit.is_primary:
            others.append((hit, FLAG_SECONDARY))
        elif primary is None:
            primary = hit
        else:
            others.append((hit, FLAG_SUPPLEMENTARY))
    return primary, others


def _tlen(hit: Any, mate: Any) -> int:
    """TLEN between the 5' ends, as minimap2 writes it (0 across contigs)."""
    if mate is None or hit.ctg != mate.ctg:
        return 0
    this5 = hit.r_en - 1 if hit.strand < 0 else hit.r_st
    next5 = mate.r_en - 1 if mate.strand < 0 else mate.r_st
    d = next5 - this5
    return d + 1 if d > 0 else d - 1 if d < 0 else 0


def proper_pair(a: Any, b: Any, max_frag_len: int) -> bool:
    """Both primaries on one contig, facing each other (FR), within max_frag_len."""
    if a is None or b is None or a.ctg != b.ctg or a.strand == b.strand:
        return False
    fwd, rev = (a, b) if a.strand > 0 else (b, a)
    return fwd.r_st <= rev.r_en and max(a.r_en, b.r_en) - min(a.r_st, b.r_st) <= max_frag_len


def sam_record(name: str, flag: int, hit: Any, seq: str, qual: str, mate: Any,
            own_primary: Any, tail: str) -> str:
    """One SAM line for a mapped hit; `mate` is the mate's primary (None: mate unmapped).

    Called for every record, so each hit attribute is read once (they are Cython
    properties) and TLEN is computed inline (as _tlen does)."""
    n = len(seq)
    strand, ctg, r_st, q_st, q_en = hit.strand, hit.ctg, hit.r_st, hit.q_st, hit.q_en
    if strand < 0:
        flag |= FLAG_REV
        left, right = n - q_en, q_st
    else:
        left, right = q_st, n - q_en
    if flag & FLAG_SECONDARY:
        clip, seq_out, qual_out = "S", "*", "*"
    else:
        if strand < 0:
            seq, qual = seq.translate(_RC)[::-1], qual[::-1]
        if flag & FLAG_SUPPLEMENTARY:
            clip = "H"
            seq_out, qual_out = seq[left:n - right] or "*", qual[left:n - right] or "*"
        else:
            clip, seq_out, qual_out = "S", seq or "*", qual or "*"
    ops = hit.cigar
    cigar = f"{ops[0][0]}M" if len(ops) == 1 else hit.cigar_str  # fast path: one M op
    if left:
        cigar = f"{left}{clip}{cigar}"
    if right:
        cigar = f"{cigar}{right}{clip}"
    if not flag & FLAG_PAIRED:
        mate_fields = "*\t0\t0"
    elif mate is None:
        flag |= FLAG_MUNMAP
        rnext = "=" if own_primary.ctg == ctg else own_primary.ctg
        mate_fields = f"{rnext}\t{own_primary.r_st + 1}\t0"
    else:
        m_strand, m_ctg, m_st = mate.strand, mate.ctg, mate.r_st
        if m_strand < 0:
            flag |= FLAG_MREV
        if m_ctg == ctg:  # TLEN between the 5' ends
            d = (mate.r_en - 1 if m_strand < 0 else m_st) - (hit.r_en - 1 if strand < 0 else r_st)
            tlen = d + 1 if d > 0 else d - 1 if d < 0 else 0
            mate_fields = f"=\t{m_st + 1}\t{tlen}"
        else:
            mate_fields = f"{m_ctg}\t{m_st + 1}\t0"
    return (f"{name}\t{flag}\t{ctg}\t{r_st + 1}\t{hit.mapq}\t{cigar}\t{mate_fields}\t"
            f"{seq_out}\t{qual_out}\tNM:i:{hit.NM}\tMD:Z:{hit.MD}{tail}")


def unmapped_record(name: str, flag: int, seq: str, qual: str, mate: Any, tail: str) -> str:
    """SAM line of an unmapped read, placed at its mate's position when the mate mapped."""
    if mate is None:
        if flag & FLAG_PAIRED:
            flag |= FLAG_MUNMAP
        place = "*\t0\t0\t*\t*\t0\t0"
    else:
        if mate.strand < 0:
            flag |= FLAG_MREV
        place = f"{mate.ctg}\t{mate.r_st + 1}\t0\t*\t=\t{mate.r_st + 1}\t0"
    return f"{name}\t{flag | FLAG_UNMAP}\t{place}\t{seq or '*'}\t{qual or '*'}{tail}"
