"""Dagster resources: the bucket, built on dagster-aws's S3 resource for ``s3://`` URIs."""


from dagster import ConfigurableResource, Failure
from dagster_aws.s3 import S3Resource
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
        if settings().deployment == "aws" and not self.uri.startswith("s3://"):
            raise Failure(allow_retries=False,
                          description=f"the AWS deployment needs an s3:// bucket, not {self.uri!r}: every step runs "
                                      "in its own ECS task, so a folder would vanish with it. Set IMAGESIM_BUCKET "
                                      "to s3://<bucket>/<prefix> (the stack's task definitions do).")
        if self.uri.startswith("s3://"):
            s3 = S3Resource(endpoint_url=self.endpoint_url, region_name=self.region_name)
            return open_bucket(self.uri, client=s3.get_client(), endpoint_url=self.endpoint_url)
        return open_bucket(self.uri)


def default_bucket_resource() -> BucketResource:
    """The bucket of the settings (read when the code location loads; a run's config may name another)."""
    current = settings()
    return BucketResource(uri=current.bucket_uri, endpoint_url=current.s3_endpoint_url)
