"""The admin web page, served by the admin API process (`add_web_routes`)."""

from gateways.web.admin import banner, ensure_admin_user, mount_web_page
from gateways.web.routes import add_web_routes

__all__ = ["add_web_routes", "banner", "ensure_admin_user", "mount_web_page"]
