"""tusd_py.client: a resumable tus 1.0.0 client (docs/client.md).

    from tusd_py.client import TusClient, UploadOptions

    with TusClient(headers={"Authorization": "Bearer ..."}) as client:
        result = client.upload("video.mp4", "https://uploads.example.com/files/",
                               UploadOptions(parallel=4), on_progress=print)
        print(result.url)

AsyncTusClient is the same with `await`. It imports only tusd_protocol and httpx, so that it
can become its own small distribution.
"""

from .aio import AsyncTusClient
from .errors import Cancelled, ClientError, UploadFailed
from .flow import Capabilities, RetryPolicy
from .plan import UploadOptions, UploadResult
from .resume import ResumeStore, fingerprint
from .sync import TusClient
from .wire import UploadInfo

__all__ = [
    "AsyncTusClient",
    "Cancelled",
    "Capabilities",
    "ClientError",
    "ResumeStore",
    "RetryPolicy",
    "TusClient",
    "UploadFailed",
    "UploadInfo",
    "UploadOptions",
    "UploadResult",
    "fingerprint",
]
