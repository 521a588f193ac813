#!/usr/bin/python3
"""A real RTSP camera for tests: GStreamer's gst-rtsp-server (Debian packages
python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,bad}).
Run it with Debian's /usr/bin/python3 (other pythons lack `gi`):

  tests/rtsp_server.py --port 0 --mount /cam1=assets/demo/bikes-640x272.h264 \
      [--mount /hd=assets/demo/bikes-1280x720.h264] [--mount /h265=....h265] \
      [--mount /mjpeg=mjpeg] [--auth user:pass [--basic]]

Binds 127.0.0.1 only, prints `READY port=N` once serving, runs until SIGTERM/SIGINT.
An Annex B .h264/.h265 clip (scripts/make-clips) is split into access units once
at start-up and replayed forever at 25 fps, without re-encoding: appsrc gets each
unit with PTS = n × 40 ms (n counts on across loops, so RTP timestamps keep
rising) and the server's sinks pace it to the clock; after a stall (SIGSTOP) it
skips ahead to the next keyframe rather than bursting. One shared pipeline per
mount; RTP over UDP or TCP interleaved; RTCP sender reports; --auth is Digest.
`mjpeg` is a live test pattern (jpegenc), for "unsupported codec" tests.
"""
import argparse, signal, sys
try:
    import gi
    gi.require_version("Gst", "1.0"); gi.require_version("GstRtsp", "1.0"); gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
except (ImportError, ValueError) as e:  # ValueError: "Namespace ... not available"
    sys.exit(f"{e}: install python3-gi gir1.2-gst-rtsp-server-1.0 (scripts/setup), run with /usr/bin/python3")

FRAME = Gst.SECOND // 25  # every clip is 25 fps (scripts/make-clips)


def load_units(path, codec):
    """The clip's access units as GstBuffers (keyframes lack DELTA_UNIT), via <codec>parse → appsink."""
    pipe = Gst.parse_launch(f"filesrc name=file ! {codec}parse ! video/x-{codec},stream-format=byte-stream,"
                            "alignment=au ! appsink name=out sync=false")
    pipe.get_by_name("file").set_property("location", path)
    sink, units = pipe.get_by_name("out"), []
    pipe.set_state(Gst.State.PLAYING)
    while (sample := sink.emit("try-pull-sample", 5 * Gst.SECOND)) is not None:  # None at EOS or error
        units.append(sample.get_buffer())
    error = pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    if error or not units or units[0].has_flags(Gst.BufferFlags.DELTA_UNIT):
        reason = error.parse_error()[0].message if error else "no access units starting with a keyframe"
        sys.exit(f"{path}: {reason} ({codec}); run scripts/make-clips")
    return units


class ClipFactory(GstRtspServer.RTSPMediaFactory):
    """Replays one clip in a loop; each new (shared) media starts at its first unit."""

    def __init__(self, path, codec):
        super().__init__(shared=True)
        self.units = load_units(path, codec)
        self.set_launch(f"( appsrc name=src format=time stream-type=stream caps=video/x-{codec},"
                        f"stream-format=byte-stream,alignment=au,framerate=25/1 ! {codec}parse ! "
                        f"rtp{codec}pay name=pay0 pt=96 config-interval=-1 )")
        self.connect("media-configure", self.configure)

    def configure(self, _factory, media):
        src, n = media.get_element().get_by_name("src"), [0]

        def need_data(appsrc, _length):
            clock, units = appsrc.get_clock(), self.units
            if clock and appsrc.current_state == Gst.State.PLAYING:
                late = clock.get_time() - appsrc.get_base_time() - n[0] * FRAME
                if late > Gst.SECOND:  # we were stopped (SIGSTOP): skip to the next keyframe, no burst
                    n[0] += late // FRAME
                    while units[n[0] % len(units)].has_flags(Gst.BufferFlags.DELTA_UNIT):
                        n[0] += 1
            buf = units[n[0] % len(units)].copy()  # shares the bytes; new timestamps
            buf.pts = buf.dts = n[0] * FRAME
            buf.duration = FRAME
            n[0] += 1
            appsrc.emit("push-buffer", buf)

        src.connect("need-data", need_data)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--mount", action="append", default=[], metavar="/PATH=CLIP|mjpeg", required=True)
    ap.add_argument("--auth", metavar="USER:PASS", help="every mount then needs these credentials")
    ap.add_argument("--basic", action="store_true", help="with --auth: Basic instead of Digest")
    args = ap.parse_args()
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
            codec = {"h264": "h264", "h265": "h265", "hevc": "h265"}.get(clip.rsplit(".", 1)[-1])
            if codec is None:
                sys.exit(f"--mount {spec}: want a .h264/.h265 Annex B clip or `mjpeg`")
            factory = ClipFactory(clip, codec)
        if args.auth:
            factory.add_role_from_structure(Gst.Structure.from_string(
                "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0])
        mounts.add_factory(path, factory)

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
