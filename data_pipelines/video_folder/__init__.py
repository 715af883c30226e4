"""A tfds builder for a folder of user videos + captions (see `builder.py`)."""
from data_pipelines.video_folder.builder import BadInputError
from data_pipelines.video_folder.builder import build
from data_pipelines.video_folder.builder import load_report
from data_pipelines.video_folder.builder import make_config
from data_pipelines.video_folder.builder import REPORT_FILE
from data_pipelines.video_folder.builder import STORAGES
from data_pipelines.video_folder.builder import VideoFolder
from data_pipelines.video_folder.builder import VideoFolderConfig

__all__ = ["BadInputError", "build", "load_report", "make_config", "REPORT_FILE", "STORAGES",
           "VideoFolder", "VideoFolderConfig"]
