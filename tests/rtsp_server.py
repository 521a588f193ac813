#!/usr/bin/python3
"""A real RTSP camera for tests: GStreamer's gst-rtsp-server (Debian packages
python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,bad}).
Run it with Debian's /usr/bin/python3 (other pythons lack `gi`):

  tests/rtsp_server.py --port 0 --mount /cam1=assets/demo/bikes-640x272.h264 \
      [--mount /hd=assets/demo/bikes-1280x720.h264] [--mount /h265=....h265] \
      [--mount /b=assets/demo/bikes-1280x720-high-bframes.mkv] \
      [--mount /mjpeg=mjpeg] [--auth user:pass [--basic]] \
      [--ts-jump /cam1=SECONDS[:TICKS]] [--huge-au /cam1=SECONDS:MIB]

Binds 127.0.0.1 only, prints `READY port=N` once serving, runs until SIGTERM/SIGINT.
An Annex B .h264/.h265 clip (scripts/make-clips) is split into access units once
at start-up and replayed forever at 25 fps, without re-encoding: appsrc gets each
unit with PTS = DTS = n × 40 ms (n counts on across loops, so RTP timestamps keep
rising) and the server's sinks pace it to the clock; after a stall (SIGSTOP) it
skips ahead to the next keyframe rather than bursting. One shared pipeline per
mount; RTP over UDP or TCP interleaved; RTCP sender reports; --auth is Digest.
A .mkv (or .mp4) clip, H.264 or H.265 (e.g. with B-frames), keeps each access
unit's own PTS and DTS (decode order, PTS != DTS): unit i of loop k goes out with
PTS/DTS = k × clip duration + its original PTS/DTS (relative to the clip's first
DTS), so RTP timestamps are presentation times, as from a real camera, and keep
rising across loops; sending is paced by DTS. Matroska stores no DTS: for a
constant frame rate it is derived as sorted(PTS)[i] − reorder delay (as ffmpeg does).
`mjpeg` is a live test pattern (jpegenc), for "unsupported codec" tests.

Hostile cameras (per mount, counted in stream time from the media's start):
--ts-jump /PATH=SECONDS[:TICKS] makes the RTP timestamps on the wire jump by TICKS
(default 2^31) of 90 kHz every SECONDS: forward by TICKS, then back by TICKS, and so
on (with 2^31 both jumps are the same 32-bit value: a receiver cannot tell +2^31 from
-2^31). Pacing is untouched: the units' PTS are shifted by TICKS only while they pass
the payloader (rtptime comes from PTS there), and shifted back right after it.
--huge-au /PATH=SECONDS:MIB appends a filler NAL (type 12) of MIB MiB to the last
access unit of every SECONDS: one access unit of tens of MB, sent at once.
"""
import argparse, signal, sys
try:
    import gi
    gi.require_version("Gst", "1.0"); gi.require_version("GstRtsp", "1.0"); gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
except (ImportError, ValueError) as e:  # ValueError: "Namespace ... not available"
    sys.exit(f"{e}: install python3-gi gir1.2-gst-rtsp-server-1.0 (scripts/setup), run with /usr/bin/python3")

FRAME = Gst.SECOND // 25  # every clip is 25 fps (scripts/make-clips)
valid = lambda t: t != Gst.CLOCK_TIME_NONE  # GST_CLOCK_TIME_IS_VALID (a macro, not introspected)


def pull_units(path, launch, first_only=False):
    """Runs `filesrc name=file ! <launch> ! appsink name=out` to EOS (or its first sample):
    (GstBuffers, caps of the first, error message or None)."""
    pipe = Gst.parse_launch(f"filesrc name=file ! {launch} ! appsink name=out sync=false")
    pipe.get_by_name("file").set_property("location", path)
    sink, units, caps = pipe.get_by_name("out"), [], None
    pipe.set_state(Gst.State.PLAYING)
    while (sample := sink.emit("try-pull-sample", 5 * Gst.SECOND)) is not None:  # None at EOS or error
        units.append(sample.get_buffer())
        caps = caps or sample.get_caps()
        if first_only:
            break
    error = pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    return units, caps, error.parse_error()[0].message if error else None


def check_units(path, codec, units, error):
    if error or not units or units[0].has_flags(Gst.BufferFlags.DELTA_UNIT):
        sys.exit(f"{path}: {error or 'no access units starting with a keyframe'} ({codec}); run scripts/make-clips")


def load_units(path, codec):
    """An Annex B clip's access units as GstBuffers (keyframes lack DELTA_UNIT), via <codec>parse → appsink,
    with their timestamps in the clip: PTS = DTS = i × 40 ms."""
    units, _, error = pull_units(path, f"{codec}parse ! video/x-{codec},stream-format=byte-stream,alignment=au")
    check_units(path, codec, units, error)
    return units, [i * FRAME for i in range(len(units))], [i * FRAME for i in range(len(units))]


def load_container(path):
    """A .mkv/.mp4 clip's H.264 or H.265 access units, converted to Annex B with parameter sets before every
    keyframe: (codec, units, PTS list, DTS list) in decode order, timestamps relative to the first DTS."""
    demux = "qtdemux" if path.lower().endswith((".mp4", ".mov")) else "matroskademux"
    _, caps, error = pull_units(path, f"{demux} ! video/x-h264;video/x-h265", first_only=True)
    codec = caps and caps.get_structure(0).get_name().removeprefix("video/x-")
    if codec not in ("h264", "h265"):
        sys.exit(f"{path}: {error or 'no video track'} ({demux}: want an H.264 or H.265 video track)")
    units, _, error = pull_units(path, f"{demux} ! {codec}parse config-interval=-1 ! "
                                       f"video/x-{codec},stream-format=byte-stream,alignment=au")
    check_units(path, f"{demux} ! {codec}parse", units, error)
    if any(not valid(b.pts) for b in units):
        sys.exit(f"{path}: access units without a PTS")
    pts = [b.pts for b in units]
    if all(valid(b.dts) for b in units):
        dts = [b.dts for b in units]
    else:  # Matroska keeps only PTS: decode times are the sorted PTS, delayed so that none is after its PTS
        order = sorted(pts)
        delay = max(max(o - p for o, p in zip(order, pts)), 0)
        dts = [o - delay for o in order]
    zero = min(dts)
    return codec, units, [p - zero for p in pts], [d - zero for d in dts]


class ClipFactory(GstRtspServer.RTSPMediaFactory):
    """Replays one clip in a loop; each new (shared) media starts at its first unit."""

    def __init__(self, path, codec, ts_jump=None, huge_au=None):
        super().__init__(shared=True)
        self.ts_jump, self.huge_au = ts_jump, huge_au  # (seconds, ticks), (seconds, bytes) or None
        if codec == "container":
            codec, self.units, self.pts, self.dts = load_container(path)
            last = self.units[-1].duration if valid(self.units[-1].duration) else FRAME
            self.length = max(max(self.pts) - min(self.pts) + last, len(self.units) * FRAME)  # one loop
        else:
            self.units, self.pts, self.dts = load_units(path, codec)
            self.length = len(self.units) * FRAME
        # A huge unit in 1400-byte packets would be ~25 000 packets in one buffer list, which overflows
        # the stack of gst-rtsp-server's TCP sender (it allocas per packet): send 60 kB packets instead
        # (fine over TCP interleaved, as RTSP clients take it).
        mtu = " mtu=60000" if huge_au else ""
        self.set_launch(f"( appsrc name=src format=time stream-type=stream caps=video/x-{codec},"
                        f"stream-format=byte-stream,alignment=au,framerate=25/1 ! {codec}parse ! "
                        f"rtp{codec}pay name=pay0 pt=96 config-interval=-1{mtu} )")
        self.connect("media-configure", self.configure)

    def configure(self, _factory, media):
        src, n = media.get_element().get_by_name("src"), [0]
        count = len(self.units)
        jump_ns = jump_period = huge = None
        if self.ts_jump:
            seconds, ticks = self.ts_jump
            jump_period = max(1, round(seconds * 25))
            jump_ns = -(-ticks * Gst.SECOND // 90_000)  # ceil: rtptime = floor(ns × 90k / 1e9) gains exactly `ticks`
            restore_pts(media.get_element().get_by_name("pay0"), jump_ns)
        if self.huge_au:
            seconds, size = self.huge_au
            huge = (max(1, round(seconds * 25)), Gst.Buffer.new_wrapped(b"\0\0\0\1\x0c" + b"\xff" * size + b"\x80"))
        # unit n (counting on across loops) is sent at DTS `dts(n)`; its RTP timestamp is from its PTS
        dts = lambda k: k // count * self.length + self.dts[k % count]

        def need_data(appsrc, _length):
            clock, units = appsrc.get_clock(), self.units
            if clock and appsrc.current_state == Gst.State.PLAYING:
                late = clock.get_time() - appsrc.get_base_time() - dts(n[0])
                if late > Gst.SECOND:  # we were stopped (SIGSTOP): skip to the next keyframe, no burst
                    n[0] += late // FRAME
                    while units[n[0] % count].has_flags(Gst.BufferFlags.DELTA_UNIT):
                        n[0] += 1
            i, offset = n[0] % count, n[0] // count * self.length
            buf = units[i].copy()  # shares the bytes; new timestamps
            buf.pts, buf.dts = offset + self.pts[i], offset + self.dts[i]
            if jump_ns and n[0] // jump_period % 2 == 1:
                buf.pts, buf.dts = buf.pts + jump_ns, buf.dts + jump_ns
            if huge and n[0] % huge[0] == huge[0] - 1:
                buf = buf.append(huge[1].copy())  # shares the filler's bytes
            buf.duration = FRAME
            n[0] += 1
            appsrc.emit("push-buffer", buf)

        src.connect("need-data", need_data)


def restore_pts(pay, shift_ns):
    """Subtracts `shift_ns` from the PTS/DTS of RTP buffers leaving `pay` that carry it, so the
    RTP timestamps keep the jump while the sinks pace by the true time (streams here run for far
    less than `shift_ns`, ~6.6 h for 2^31 ticks)."""

    def back(buf):
        if valid(buf.pts) and buf.pts >= shift_ns:
            buf.pts -= shift_ns
            if valid(buf.dts) and buf.dts >= shift_ns:
                buf.dts -= shift_ns

    def probe(_pad, info):
        if info.type & Gst.PadProbeType.BUFFER_LIST:
            blist = info.get_buffer_list()
            for i in range(blist.length()):
                back(blist.get(i))
        else:
            back(info.get_buffer())
        return Gst.PadProbeReturn.OK

    pay.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, probe)


def per_mount(specs, option, parse):
    """`/PATH=VALUE` options → {path: parse(VALUE)}."""
    out = {}
    for spec in specs:
        path, _, value = spec.partition("=")
        try:
            out[path] = parse(value)
        except ValueError:
            sys.exit(f"{option} {spec}: see --help")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--mount", action="append", default=[], metavar="/PATH=CLIP|mjpeg", required=True)
    ap.add_argument("--auth", metavar="USER:PASS", help="every mount then needs these credentials")
    ap.add_argument("--basic", action="store_true", help="with --auth: Basic instead of Digest")
    ap.add_argument("--ts-jump", action="append", default=[], metavar="/PATH=SECONDS[:TICKS]")
    ap.add_argument("--huge-au", action="append", default=[], metavar="/PATH=SECONDS:MIB")
    args = ap.parse_args()
    jumps = per_mount(args.ts_jump, "--ts-jump",
                      lambda v: (float(v.partition(":")[0]), int(v.partition(":")[2] or 1 << 31)))
    huge = per_mount(args.huge_au, "--huge-au", lambda v: (float(v.split(":")[0]), int(v.split(":")[1]) << 20))
    Gst.init(None)

    server = GstRtspServer.RTSPServer(address="127.0.0.1", service=str(args.port))
    mounts = server.get_mount_points()
    for spec in args.mount:
        path, _, clip = spec.partition("=")
        if not path.startswith("/") or not clip:
            sys.exit(f"--mount {spec}: want /PATH=CLIP or /PATH=mjpeg")
        if clip == "mjpeg":
            factory = GstRtspServer.RTSPMediaFactory(shared=True)
            factory.set_launch("( videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=25/1 ! "
                               "jpegenc quality=70 ! rtpjpegpay name=pay0 pt=26 )")
        else:
            codec = {"h264": "h264", "h265": "h265", "hevc": "h265", "mkv": "container", "mp4": "container",
                     "mov": "container"}.get(clip.rsplit(".", 1)[-1].lower())
            if codec is None:
                sys.exit(f"--mount {spec}: want a .h264/.h265 Annex B clip, a .mkv/.mp4 clip or `mjpeg`")
            factory = ClipFactory(clip, codec, jumps.pop(path, None), huge.pop(path, None))
        if args.auth:
            factory.add_role_from_structure(Gst.Structure.from_string(
                "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0])
        mounts.add_factory(path, factory)

    if jumps or huge:
        sys.exit(f"--ts-jump/--huge-au for paths with no clip mount: {sorted({*jumps, *huge})}")
    if args.auth:
        user, _, password = args.auth.partition(":")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken.new()  # introspected gst_rtsp_token_new_empty()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        if args.basic:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        else:
            auth.add_digest(user, password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        server.set_auth(auth)

    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    print(f"READY port={server.get_bound_port()}", flush=True)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
