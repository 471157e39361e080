"""The admin web page, served by the admin API process (`add_web_routes`)."""

from gateways.web.admin import banner, mount_web_page
from gateways.web.routes import add_web_routes

__all__ = ["add_web_routes", "banner", "mount_web_page"]
