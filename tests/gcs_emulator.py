"""Starts gcp-storage-emulator (`python tests/gcs_emulator.py PORT`) with the two things of real GCS it leaves out.

Real GCS answers a media download (GET .../o/NAME?alt=media) with `x-goog-generation`; the emulator does not,
and tensorstore's GCS driver (orbax's array store) needs it to read the OCDBT manifest it then rewrites
with a conditional write ("Malformed StorageGeneration" otherwise). And real GCS moves an object within a
bucket (POST .../o/SRC/moveTo/o/DST, what gcsfs's `mv` calls first); the emulator answers 501, which gcsfs
retries for half a minute before it copies and deletes instead. This adds the header and the move and
changes nothing else, so every client still speaks the GCS JSON protocol to a real server.
"""

from http import HTTPStatus
import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])
  except Exception:  # pylint: disable=broad-except  (a missing object: the original handler answers 404)
    pass
  return _download(request, response, storage, *args, **kwargs)


objects.download = download  # calls through the module (the JSON API's alt=media) ...
for _, methods in server.HANDLERS:  # ... and the route table's own references
  for method, handler in list(methods.items()):
    if handler is _download:
      methods[method] = download


def move(request, response, storage, *args, **kwargs):
  """objects.move: the copy and delete of the emulator's own handlers, answered with the moved object."""
  bucket, source = request.params["bucket_name"], request.params["object_id"]
  try:
    moved = objects._copy(  # pylint: disable=protected-access
      request.base_url, storage, bucket, source, bucket, request.params["dest_object_id"]
    )
  except objects.NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return
  objects._delete(storage, bucket, source)  # pylint: disable=protected-access
  response.json(moved)


_OBJECT = r"(?P<object_id>.*[^/]+)"
server.HANDLERS = tuple(
  (
    rf"^{root}/b/(?P<bucket_name>[-.\w]+)/o/{_OBJECT}/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
    {"POST": move},
  )
  for root in ("/storage/v1", "")
) + tuple(server.HANDLERS)

if __name__ == "__main__":
  port = int(sys.argv[1])
  emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket="bucket")
  emulator.run()
