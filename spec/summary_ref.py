"""summary_ref.py - the peers of spec/summary_spec.lua: event files read by TensorBoard's own
reader and by an independent decoder, printed as a Lua table literal.

  summary_ref.py tb FILE OUT      (the test venv's Python) TensorBoard's EventAccumulator
  summary_ref.py pb FILE OUT [HISTOS]  (the system Python) this file's own TFRecord reader and
                                  CRC32C over every record, the messages decoded by
                                  google.protobuf from descriptors built here with
                                  TensorBoard's field numbers; HISTOS names a file of lines
                                  'tag<TAB>step<TAB>bins<TAB>values.npy' whose histograms are
                                  checked against numpy.histogram over the same edges.

  summary_ref.py write LOGDIR     (the test venv's Python) an event file written by
                                  TensorBoard's own EventFileWriter, for mg.summary.read

The readers write OUT as 'return { file_version =, scalars = { [tag] = { {step, wall_time, value} } },
histograms = { [tag] = { {step =, min =, ..., bucket_limit = {}, bucket = {}} } },
images = { [tag] = { {step =, width =, height =, colorspace =, hex =} } },
texts = { [tag] = { {step, text} } }, records =, numpy_checked =, numpy_mismatches = {} }'.
"""
import struct
import sys


def lua(v):
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if v == v and abs(v) != float("inf") else "(0/0)"
    if isinstance(v, str):
        v = v.encode("utf-8")
    if isinstance(v, bytes):                    # every other byte as a decimal escape
        return '"' + "".join(chr(c) if c < 128 and chr(c).isalnum() or chr(c) in " _-./" else "\\%03d" % c
                             for c in v) + '"'
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(lua(x) for x in v) + "}"
    if isinstance(v, dict):
        return "{" + ", ".join("[%s] = %s" % (lua(k), lua(x)) for k, x in v.items()) + "}"
    raise TypeError(type(v))


def empty():
    return {"file_version": None, "scalars": {}, "histograms": {}, "images": {}, "texts": {}}


def histo_dict(step, h):
    return {"step": step, "min": h.min, "max": h.max, "num": h.num, "sum": h.sum,
            "sum_squares": h.sum_squares, "bucket_limit": list(h.bucket_limit),
            "bucket": list(h.bucket)}


# ---------------------------------------------------------------- TensorBoard's reader

def read_tb(path):
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util
    acc = ea.EventAccumulator(path, size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0,
                                                   ea.IMAGES: 0, ea.TENSORS: 0})
    acc.Reload()
    out = empty()
    out["file_version"] = "brain.Event:%g" % acc.file_version if acc.file_version else None
    tags = acc.Tags()
    for t in tags["scalars"]:
        out["scalars"][t] = [[e.step, e.wall_time, e.value] for e in acc.Scalars(t)]
    for t in tags["histograms"]:
        out["histograms"][t] = [histo_dict(e.step, e.histogram_value) for e in acc.Histograms(t)]
    for t in tags["images"]:
        out["images"][t] = [{"step": e.step, "width": e.width, "height": e.height,
                             "hex": e.encoded_image_string.hex(),
                             "pixels": png_pixels(e.encoded_image_string)} for e in acc.Images(t)]
    for t in tags["tensors"]:
        meta = acc.SummaryMetadata(t)
        if meta.plugin_data.plugin_name == "text":
            out["texts"][t] = [[e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode("utf-8")]
                               for e in acc.Tensors(t)]
    # what TensorBoard's server loads (the plugin accumulator migrates the legacy values to
    # each plugin's tensors): tags per plugin, and each histogram's (k, 3) buckets total
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea
    pacc = pea.EventAccumulator(path, size_guidance={"tensors": 0})
    pacc.Reload()
    out["plugins"] = {p: sorted(pacc.PluginTagToContent(p).keys())
                      for p in ("scalars", "histograms", "images", "text")}
    out["plugin_histogram_counts"] = {
        t: [float(tensor_util.make_ndarray(e.tensor_proto)[:, 2].sum()) for e in pacc.Tensors(t)]
        for t in out["plugins"]["histograms"]}
    return out


def png_pixels(data):
    """The PNG's mode and its pixels in row-major order, channels innermost (Pillow)."""
    import io
    from PIL import Image
    im = Image.open(io.BytesIO(data))
    im.load()
    flat = []
    for px in im.getdata():
        flat.extend(px if isinstance(px, tuple) else (px,))
    return {"mode": im.mode, "values": flat}


# ---------------------------------------------------------------- the independent decoder

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def messages():
    from google.protobuf import descriptor_pb2, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    fp = descriptor_pb2.FileDescriptorProto(name="ref_tfevents.proto", package="ref", syntax="proto3")

    def msg(parent, name, fields):
        m = parent.add()
        m.name = name
        for fname, num, ftype, extra in fields:
            f = m.field.add(name=fname, number=num, type=ftype,
                            label=F.LABEL_REPEATED if extra.get("repeated") else F.LABEL_OPTIONAL)
            if "type_name" in extra:
                f.type_name = extra["type_name"]
            if "oneof" in extra:
                f.oneof_index = extra["oneof"]
        return m

    ev = msg(fp.message_type, "Event", [
        ("wall_time", 1, F.TYPE_DOUBLE, {}), ("step", 2, F.TYPE_INT64, {}),
        ("file_version", 3, F.TYPE_STRING, {"oneof": 0}),
        ("summary", 5, F.TYPE_MESSAGE, {"oneof": 0, "type_name": ".ref.Summary"})])
    ev.oneof_decl.add(name="what")
    msg(fp.message_type, "HistogramProto", [
        ("min", 1, F.TYPE_DOUBLE, {}), ("max", 2, F.TYPE_DOUBLE, {}), ("num", 3, F.TYPE_DOUBLE, {}),
        ("sum", 4, F.TYPE_DOUBLE, {}), ("sum_squares", 5, F.TYPE_DOUBLE, {}),
        ("bucket_limit", 6, F.TYPE_DOUBLE, {"repeated": True}),
        ("bucket", 7, F.TYPE_DOUBLE, {"repeated": True})])
    shape = msg(fp.message_type, "TensorShapeProto", [
        ("dim", 2, F.TYPE_MESSAGE, {"repeated": True, "type_name": ".ref.TensorShapeProto.Dim"})])
    msg(shape.nested_type, "Dim", [("size", 1, F.TYPE_INT64, {})])
    msg(fp.message_type, "TensorProto", [
        ("dtype", 1, F.TYPE_INT32, {}),
        ("tensor_shape", 2, F.TYPE_MESSAGE, {"type_name": ".ref.TensorShapeProto"}),
        ("string_val", 8, F.TYPE_BYTES, {"repeated": True})])
    meta = msg(fp.message_type, "SummaryMetadata", [
        ("plugin_data", 1, F.TYPE_MESSAGE, {"type_name": ".ref.SummaryMetadata.PluginData"})])
    msg(meta.nested_type, "PluginData", [("plugin_name", 1, F.TYPE_STRING, {}),
                                         ("content", 2, F.TYPE_BYTES, {})])
    summ = msg(fp.message_type, "Summary", [
        ("value", 1, F.TYPE_MESSAGE, {"repeated": True, "type_name": ".ref.Summary.Value"})])
    msg(summ.nested_type, "Image", [
        ("height", 1, F.TYPE_INT32, {}), ("width", 2, F.TYPE_INT32, {}),
        ("colorspace", 3, F.TYPE_INT32, {}), ("encoded_image_string", 4, F.TYPE_BYTES, {})])
    val = msg(summ.nested_type, "Value", [
        ("tag", 1, F.TYPE_STRING, {}),
        ("metadata", 9, F.TYPE_MESSAGE, {"type_name": ".ref.SummaryMetadata"}),
        ("simple_value", 2, F.TYPE_FLOAT, {"oneof": 0}),
        ("image", 4, F.TYPE_MESSAGE, {"oneof": 0, "type_name": ".ref.Summary.Image"}),
        ("histo", 5, F.TYPE_MESSAGE, {"oneof": 0, "type_name": ".ref.HistogramProto"}),
        ("tensor", 8, F.TYPE_MESSAGE, {"oneof": 0, "type_name": ".ref.TensorProto"})])
    val.oneof_decl.add(name="value")
    return message_factory.GetMessages([fp])["ref.Event"]


def read_pb(path, histos):
    Event = messages()
    data = open(path, "rb").read()
    out = empty()
    off, records = 0, 0
    raw = {}
    while off < len(data):
        (n,) = struct.unpack_from("<Q", data, off)
        (lcrc,) = struct.unpack_from("<I", data, off + 8)
        assert lcrc == masked(crc32c(data[off:off + 8])), "length CRC at %d" % off
        body = data[off + 12:off + 12 + n]
        (dcrc,) = struct.unpack_from("<I", data, off + 12 + n)
        assert len(body) == n and dcrc == masked(crc32c(body)), "data CRC at %d" % off
        ev = Event()
        ev.ParseFromString(body)
        records += 1
        off += 16 + n
        if ev.WhichOneof("what") == "file_version":
            out["file_version"] = ev.file_version
            continue
        for v in ev.summary.value:
            kind = v.WhichOneof("value")
            if kind == "simple_value":
                out["scalars"].setdefault(v.tag, []).append([ev.step, ev.wall_time, v.simple_value])
            elif kind == "histo":
                out["histograms"].setdefault(v.tag, []).append(histo_dict(ev.step, v.histo))
                raw[(v.tag, ev.step)] = v.histo
            elif kind == "image":
                out["images"].setdefault(v.tag, []).append({
                    "step": ev.step, "width": v.image.width, "height": v.image.height,
                    "colorspace": v.image.colorspace, "hex": v.image.encoded_image_string.hex()})
            elif kind == "tensor" and v.metadata.plugin_data.plugin_name == "text":
                t = v.tensor
                assert t.dtype == 7 and len(t.tensor_shape.dim) == 0 and len(t.string_val) == 1
                out["texts"].setdefault(v.tag, []).append([ev.step, t.string_val[0].decode("utf-8")])
    out["records"] = records
    if histos:
        out["numpy_checked"], out["numpy_mismatches"] = check_numpy(histos, raw)
    return out


def default_edges():
    """TensorFlow's histogram.cc InitDefaultBucketsInner, computed here again."""
    v, pos = 1e-12, []
    while v < 1e20:
        pos.append(v)
        v *= 1.1
    big = sys.float_info.max
    return [-big] + [-x for x in reversed(pos)] + [0.0] + pos + [big]


def check_numpy(listing, raw):
    import numpy as np
    checked, bad = 0, []
    for line in open(listing):
        tag, step, bins, npy = line.rstrip("\n").split("\t")
        h = raw[(tag, int(step))]
        x = np.load(npy).astype(np.float64).ravel()
        if int(bins) > 0:                       # uniform: edges first edge, bucket_limit...
            lo, hi = (x.min(), x.max()) if x.min() != x.max() else (x.min() - 0.5, x.max() + 0.5)
            edges = np.array([lo] + list(h.bucket_limit))
            counts, _ = np.histogram(x, bins=edges)
            if len(h.bucket) != int(bins) or list(counts) != list(h.bucket):
                bad.append("%s@%s: counts %s, numpy %s" % (tag, step, list(h.bucket), list(counts)))
            if not np.allclose(edges, np.linspace(lo, hi, int(bins) + 1), rtol=1e-12, atol=0):
                bad.append("%s@%s: edges differ from numpy's linspace" % (tag, step))
            ref, _ = np.histogram(x, bins=int(bins))
            if list(ref) != list(h.bucket):
                bad.append("%s@%s: counts %s, numpy.histogram(x, bins) %s" % (tag, step, list(h.bucket), list(ref)))
        else:                                   # TensorFlow's edges: the non-empty buckets
            e = default_edges()
            counts, _ = np.histogram(x, bins=np.array(e))
            want = [(e[i + 1], float(c)) for i, c in enumerate(counts) if c > 0]
            got = [(l, c) for l, c in zip(h.bucket_limit, h.bucket) if c > 0]
            if want != got:
                bad.append("%s@%s: buckets %s, numpy %s" % (tag, step, got[:5], want[:5]))
            if set(h.bucket_limit) - set(e):
                bad.append("%s@%s: a bucket limit that is not a default edge" % (tag, step))
        for name, val in (("min", x.min()), ("max", x.max()), ("num", float(len(x)))):
            if getattr(h, name) != val:
                bad.append("%s@%s: %s %r, numpy %r" % (tag, step, name, getattr(h, name), val))
        if not np.isclose(h.sum, x.sum(), rtol=1e-12) or not np.isclose(h.sum_squares, (x * x).sum(), rtol=1e-12):
            bad.append("%s@%s: sum/sum_squares differ" % (tag, step))
        checked += 1
    return checked, bad


def write_tb(logdir):
    from tensorboard.compat.proto import event_pb2, histogram_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.plugins.text import metadata as text_metadata
    from tensorboard.util import tensor_util
    w = EventFileWriter(logdir)
    V = summary_pb2.Summary.Value
    for step in range(3):
        w.add_event(event_pb2.Event(wall_time=100.0 + step, step=step, summary=summary_pb2.Summary(
            value=[V(tag="tb/scalar", simple_value=0.25 * step)])))
    h = histogram_pb2.HistogramProto(min=-1, max=2, num=3, sum=1, sum_squares=6,
                                     bucket_limit=[0, 1, 2], bucket=[1, 1, 1])
    w.add_event(event_pb2.Event(wall_time=200.0, step=7, summary=summary_pb2.Summary(value=[V(tag="tb/histo", histo=h)])))
    meta = text_metadata.create_summary_metadata(display_name="", description="")
    w.add_event(event_pb2.Event(wall_time=300.0, step=8, summary=summary_pb2.Summary(value=[V(
        tag="tb/text", metadata=meta, tensor=tensor_util.make_tensor_proto("written by TensorBoard"))])))
    import numpy as np
    from tensorboard.plugins.scalar import metadata as scalar_metadata
    smeta = scalar_metadata.create_summary_metadata(display_name="", description="")
    for step, x in ((9, np.float32(0.75)), (10, np.float64(1.0 / 3)), (11, np.array([2.5], np.float32).reshape(()))):
        w.add_event(event_pb2.Event(wall_time=400.0, step=step, summary=summary_pb2.Summary(value=[V(
            tag="tf2/scalar", metadata=smeta, tensor=tensor_util.make_tensor_proto(x))])))
    t = tensor_util.make_tensor_proto(np.float64(0.125))
    t.double_val[:] = []
    t.tensor_content = np.float64(0.125).tobytes()          # the packed form TF also writes
    w.add_event(event_pb2.Event(wall_time=400.0, step=12, summary=summary_pb2.Summary(value=[V(
        tag="tf2/scalar", metadata=smeta, tensor=t)])))
    w.close()


def main():
    if sys.argv[1] == "write":
        write_tb(sys.argv[2])
        return
    mode, path, outp = sys.argv[1:4]
    out = read_tb(path) if mode == "tb" else read_pb(path, sys.argv[4] if len(sys.argv) > 4 else None)
    with open(outp, "w") as f:
        f.write("return " + lua(out) + "\n")


main()
