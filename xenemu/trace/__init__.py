"""Hypercall traces (abi/TRACE.md): what a daemon served, to replay and to read.

records   the header's and the records' schema (msgspec Structs with bounds),
          and the pairing of a continued call's rounds
writer    the daemon's recorder: writes the engine's events, one write a batch
pack      records as msgpack bytes, the hot kinds packed in C (cext/tracepack.c)
reader    reads and checks a trace, plain, gzip or xz
replay    runs a trace's records through an engine, reports divergences
text      records as text: `trace show` lines, replay's reports
cli       the commands: `xenemu replay`, `xenemu trace show|stats`

Nothing here runs a hypercall: replay feeds what the reader yields to the
engine (xenemu.engine) the daemon drives.
"""
