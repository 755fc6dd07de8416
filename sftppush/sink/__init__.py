"""The store: S3 requests over boto3 and awscrt, multipart uploads and their parts, verify and
collision answers, and the window of requests in flight. It never reads the queue or a
source file's path: it is given a stream and a key."""
