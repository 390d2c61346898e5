"""A headless Chromium driven by Selenium, for the web console's tests (tests/test_console.py).

Debian's chromium and chromium-driver (`make chromium`, part of `make test`), named explicitly:
Selenium Manager is never asked for a browser or a driver (it would try to download them, and
the machine reaches no such host). Waits are conditions with a deadline, never sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_MISSING = ("chromium and chromium-driver are not installed: `make chromium` (as root; "
                    "make test does it) installs them with apt-get")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-extensions", "--disable-sync",
         "--no-first-run", "--window-size=1400,1000")
WAIT_S = 20.0

T = TypeVar("T")


def chromium_installed() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


class Browser:
    """One headless Chromium; `shot(name)` writes a screenshot into `shots`."""

    def __init__(self, shots: Path) -> None:
        self.shots = shots
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            options.add_argument(flag)
        # The driver's path given: Selenium skips Selenium Manager (nothing to find or fetch).
        service = Service(executable_path=str(CHROMEDRIVER), log_output=str(shots / "driver.log"))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(30)
        self._shots = 0

    def close(self) -> None:
        self.driver.quit()

    def open(self, url: str) -> None:
        self.driver.get(url)

    def shot(self, name: str) -> Path:
        self._shots += 1
        path = self.shots / f"{self._shots:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def until(self, condition: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
        """`condition()` once truthy (elements that went stale meanwhile: try again)."""

        def attempt(_: Any) -> T | bool:
            try:
                return condition()
            except (StaleElementReferenceException, WebDriverException):
                return False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(attempt)
        except Exception as exc:  # TimeoutException: say what was awaited, and the banner
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; banner: "
                                 f"{self.banner()!r}") from exc

    def find(self, css: str) -> WebElement:
        return self.until(lambda: self.driver.find_element(By.CSS_SELECTOR, css), css)

    def text(self, css: str) -> str:
        """The text of the first element matching `css` ("" if none, or if a refresh of the
        page replaced it while it was read)."""
        try:
            found = self.driver.find_elements(By.CSS_SELECTOR, css)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            return ""

    def script_errors(self) -> list[str]:
        """Uncaught errors of the page's script since the last call (Chromium's log)."""
        return [entry["message"] for entry in self.driver.get_log("browser")
                if entry.get("source") == "javascript"]

    def banner(self) -> str:
        found = self.driver.find_elements(By.ID, "banner")
        return found[0].text if found and found[0].is_displayed() else ""

    # The page redraws itself every 2 s: an element found may be replaced before it is used.
    # Each action finds and acts in one attempt, tried again if what it found went stale.
    def type(self, css: str, text: str) -> None:
        def typed() -> bool:
            field = self.driver.find_element(By.CSS_SELECTOR, css)
            field.clear()
            field.send_keys(text)
            return True

        self.until(typed, f"{css} to take {text!r}")

    def click(self, css: str) -> None:
        def clicked() -> bool:
            element = self._clickable(css)
            if element is None:
                return False
            element.click()
            return True

        self.until(clicked, f"{css} to be clicked")

    def _clickable(self, css: str) -> WebElement | None:
        element = self.driver.find_element(By.CSS_SELECTOR, css)
        return element if element.is_displayed() and element.is_enabled() else None

    def submit(self, field_css: str) -> None:
        """Submit the form holding `field_css` through its submit button."""
        def submitted() -> bool:
            self.driver.find_element(By.CSS_SELECTOR, field_css).find_element(
                By.XPATH, "ancestor::form//button[@type='submit']").click()
            return True

        self.until(submitted, f"the form of {field_css} to be submitted")

    def cell(self, name: str, column: str) -> str:
        """The text of the cell `column` (a class) in the row of resource `name`."""
        return self.text(f'tr[data-name="{name}"] td.{column}')

    def wait_banner(self, fragment: str) -> str:
        return self.until(lambda: fragment in self.banner() and self.banner(),
                          f"the banner to say {fragment!r}")
