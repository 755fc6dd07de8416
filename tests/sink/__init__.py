"""Tests of sftppush/sink: PUTs over awscrt and boto3, multipart, requests in flight."""
