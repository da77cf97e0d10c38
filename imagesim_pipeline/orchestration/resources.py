"""Dagster resources: the bucket (for ``s3://`` URIs, a boto3 session in the configured region)."""


from dagster import ConfigurableResource, Failure
from pydantic import Field

from imagesim_pipeline.settings import bucket_uri, settings
from imagesim_pipeline.storage import Bucket, open_bucket


class BucketResource(ConfigurableResource):
    """The imagesim bucket: a local folder or ``s3://bucket/prefix`` (``IMAGESIM_BUCKET``)."""

    uri: str = Field(default_factory=bucket_uri, description="Bucket root: a folder or s3://bucket/prefix")
    endpoint_url: str | None = Field(default=None,
                                     description="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)")
    region_name: str | None = Field(default=None, description="AWS region of the bucket")

    def get_bucket(self) -> Bucket:
        """The bucket; a Failure that will not retry for a folder in the AWS deployment."""
        if settings().deployment == "aws" and not self.uri.startswith("s3://"):
            raise Failure(allow_retries=False,
                          description=f"the AWS deployment needs an s3:// bucket, not {self.uri!r}: every step runs "
                                      "in its own ECS task, so a folder would vanish with it. Set IMAGESIM_BUCKET "
                                      "to s3://<bucket>/<prefix> (the stack's task definitions do).")
        if self.uri.startswith("s3://"):
            import boto3

            session = boto3.Session(region_name=self.region_name)  # None: boto3's default region chain
            return open_bucket(self.uri, session=session, endpoint_url=self.endpoint_url)
        return open_bucket(self.uri)


def default_bucket_resource() -> BucketResource:
    """The bucket of the settings (read when the code location loads; a run's config may name another)."""
    current = settings()
    return BucketResource(uri=current.bucket_uri, endpoint_url=current.s3_endpoint_url)
