"""Starts gcp-storage-emulator (`python tests/gcs_emulator.py PORT`) with the one header it leaves out.

Real GCS answers a media download (GET .../o/NAME?alt=media) with `x-goog-generation`; the emulator does not,
and tensorstore's GCS driver (orbax's array store) needs it to read the OCDBT manifest it then rewrites
with a conditional write ("Malformed StorageGeneration" otherwise). This adds the header and changes
nothing else, so every client still speaks the GCS JSON protocol to a real server.
"""

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

if __name__ == "__main__":
  port = int(sys.argv[1])
  emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket="bucket")
  emulator.run()
