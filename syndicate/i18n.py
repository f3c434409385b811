"""Every reader-facing string, Vietnamese and English, in one table.

Sections: "pages" (the static site's chrome), "digest" (the digest and the confirmation
mail) and "web" (the subscription service's pages; it shows them over the "pages" chrome).
Placeholders such as `{site}`, `{n}` and `{hours}` are filled in by the caller with
str.replace (never by a template engine, so a site title cannot inject template code).
Dates are written here too, one way for pages, feeds' readers and the digest alike.
"""

from __future__ import annotations

import functools
from datetime import date, datetime, time, timedelta, tzinfo

LANGUAGES = ("vi", "en")

STRINGS: dict[str, dict[str, dict[str, str]]] = {
    "pages": {
        "vi": {
            # The link a keyboard's first Tab lands on, past the header to the page's own.
            "skip": "Chuyển đến nội dung chính",
            "home": "Trang chủ",
            # After a link to the index on a page in the other language (the site, its index
            # included, is built in site.language only): the language the reader lands in.
            "in_vi": "(tiếng Việt)",
            "in_en": "(tiếng Anh)",
            "feeds": "Theo dõi",
            # The header's link to the sign-up form, among the feeds.
            "by_email": "Email",
            "unknown_date": "Chưa rõ ngày",
            "by": "Tác giả:",
            # A story credited to its source (an agency, a paper): not its author.
            "credit": "Theo {source}",
            # Closes a feed entry cut short (an article far longer than any a paper runs).
            "whole_article": "Đọc toàn bài trên trang",
            "newer": "← Tin mới hơn",
            "older": "Tin cũ hơn →",
            "pages": "Các trang tin",
            "empty": "Chưa có bài viết nào.",
            "back": "← Về trang chủ",
            "latest": "Tin mới nhất",
            "archive": "Lưu trữ, trang {page}",
            "other_news": "Tin khác",
            "photo_note": "Ảnh trong bài gốc",
        },
        "en": {
            "skip": "Skip to main content",
            "home": "Home",
            "in_vi": "(in Vietnamese)",
            "in_en": "(in English)",
            "feeds": "Follow",
            "by_email": "Email",
            "unknown_date": "Date unknown",
            "by": "By",
            "credit": "Source: {source}",
            "whole_article": "Read the whole article on the site",
            "newer": "← Newer",
            "older": "Older →",
            "pages": "Pages of news",
            "empty": "No articles yet.",
            "back": "← Back to the front page",
            "latest": "Latest news",
            "archive": "Archive, page {page}",
            "other_news": "Other news",
            "photo_note": "Photo in the original",
        },
    },
    "digest": {
        "vi": {
            "heading": "Bản tin {date}",
            "in_this_issue": "Trong số này",
            "read_more": "Đọc tiếp",
            "other_news": "Tin khác",
            "more_one": "Và {n} tin khác trên trang",
            "more_many": "Và {n} tin khác trên trang",
            "subject_more": "và {n} tin khác",
            # After a headline in another language: no words of ours to run on from it.
            "subject_more_other": "(+{n})",
            "why": "Bạn nhận được thư này vì đã đăng ký nhận bản tin hằng ngày của {site}.",
            # The "view in browser" page: one "của" (not "bản xem ... của bản tin ... của").
            "why_web": (
                "Bạn đang xem bản tin hằng ngày của {site} trên trình duyệt. "
                "Để hủy đăng ký, hãy dùng liên kết ở cuối thư bản tin bạn nhận được."
            ),
            # The <title> of that page (a mail's is its subject).
            "page_title": "Bản tin {date} — {site}",
            "unsubscribe": "Hủy đăng ký",
            "view_in_browser": "Xem trong trình duyệt",
            "subscribe_by_email": "Nhận bản tin này qua email mỗi ngày",
            "feeds": "Theo dõi qua",
            "site_link": "Trang tin",
            "confirm_subject": "Xác nhận đăng ký bản tin {site}",
            "confirm_heading": "Xác nhận đăng ký",
            "confirm_body": (
                "Bạn (hoặc ai đó dùng địa chỉ này) vừa đăng ký nhận bản tin hằng ngày "
                "của {site}. Bấm vào nút dưới đây để xác nhận."
            ),
            "confirm_body_text": (
                "Bạn (hoặc ai đó dùng địa chỉ này) vừa đăng ký nhận bản tin hằng ngày "
                "của {site}. Mở liên kết dưới đây để xác nhận."
            ),
            "confirm_button": "Xác nhận đăng ký",
            "confirm_expiry": (
                "Liên kết có hiệu lực trong {hours} giờ. Nếu bạn không đăng ký, hãy bỏ qua "
                "thư này: bạn sẽ không nhận thêm thư nào."
            ),
            "confirm_link_label": "Hoặc mở liên kết này",
        },
        "en": {
            "heading": "News for {date}",
            "in_this_issue": "In this issue",
            "read_more": "Read more",
            "other_news": "Other news",
            "more_one": "And {n} more story on the site",
            "more_many": "And {n} more stories on the site",
            "subject_more": "and {n} more",
            "subject_more_other": "(+{n})",
            "why": "You are receiving this because you subscribed to the daily digest of {site}.",
            "why_web": (
                "You are reading the {site} daily digest in your browser. "
                "To unsubscribe, use the link at the end of any digest email you received."
            ),
            "page_title": "News for {date} — {site}",
            "unsubscribe": "Unsubscribe",
            "view_in_browser": "View in browser",
            "subscribe_by_email": "Get this digest by email every day",
            "feeds": "Follow via",
            "site_link": "Website",
            "confirm_subject": "Confirm your subscription to {site}",
            "confirm_heading": "Please confirm your subscription",
            "confirm_body": (
                "You (or someone using this address) asked to receive the daily digest of "
                "{site}. Click the button below to confirm."
            ),
            "confirm_body_text": (
                "You (or someone using this address) asked to receive the daily digest of "
                "{site}. Open the link below to confirm."
            ),
            "confirm_button": "Confirm subscription",
            "confirm_expiry": (
                "The link works for {hours} hours. If you did not sign up, ignore this "
                "message: you will get no more mail from us."
            ),
            "confirm_link_label": "Or open this link",
        },
    },
    "web": {
        "vi": {
            "subscribe_title": "Đăng ký nhận bản tin",
            "subscribe_intro": (
                "Mỗi ngày một email với những tin mới nhất. "
                "Bạn có thể hủy đăng ký bất cứ lúc nào từ liên kết trong mỗi email."
            ),
            "invalid_email": "Địa chỉ email này không hợp lệ. Hãy kiểm tra và nhập lại.",
            "sent_title": "Hãy kiểm tra hộp thư của bạn",
            "sent_body": (
                "Chúng tôi đã nhận yêu cầu đăng ký cho {email}. Nếu địa chỉ này cần xác nhận, "
                "một email có liên kết xác nhận sẽ đến trong vài phút; "
                "liên kết có hiệu lực trong {hours} giờ."
            ),
            "sent_hint": "Không thấy email? Hãy xem trong thư mục thư rác hoặc quảng cáo.",
            "confirm_ask_title": "Xác nhận đăng ký",
            "confirm_ask_body": "Bấm nút dưới đây để bắt đầu nhận bản tin qua email.",
            "confirm_ask_button": "Xác nhận đăng ký",
            "confirmed_title": "Đăng ký đã được xác nhận",
            "confirmed_body": "Cảm ơn bạn! Bản tin sẽ đến hộp thư của bạn từ số tiếp theo.",
            "bad_confirm_title": "Liên kết xác nhận không dùng được",
            "bad_confirm_body": (
                "Liên kết này đã hết hạn, bị thay đổi hoặc không còn hiệu lực. "
                "Hãy đăng ký lại để nhận một liên kết mới."
            ),
            "cut_confirm_title": "Liên kết xác nhận bị thiếu một phần",
            "cut_confirm_body": (
                "Liên kết này ngắn hơn liên kết chúng tôi đã gửi: có lẽ nó bị ngắt xuống dòng "
                "trong email và chỉ phần đầu được mở. Hãy bấm nút trong email xác nhận, hoặc "
                "chép trọn cả liên kết (kể cả phần ở dòng dưới) vào trình duyệt."
            ),
            "expired_confirm_title": "Liên kết xác nhận đã hết hạn",
            "expired_confirm_body": (
                "Liên kết xác nhận chỉ có hiệu lực trong {hours} giờ. Đăng ký chưa được xác nhận "
                "nên đã bị hủy; hãy đăng ký lại để nhận một liên kết mới."
            ),
            "unsubscribe_title": "Hủy đăng ký",
            "unsubscribe_body": "Bấm nút dưới đây để ngừng nhận bản tin qua email.",
            "unsubscribe_button": "Hủy đăng ký",
            "unsubscribed_title": "Bạn đã hủy đăng ký",
            "unsubscribed_body": (
                "Bạn sẽ không nhận bản tin nữa. Nếu đổi ý, bạn có thể đăng ký lại bất cứ lúc nào."
            ),
            "subscribe_again": "Đăng ký lại",
            "how_unsubscribe_title": "Cách hủy đăng ký",
            "how_unsubscribe_body": (
                "Mỗi bản tin có một liên kết hủy đăng ký riêng ở cuối thư. "
                "Hãy mở liên kết đó trong một email bạn nhận được rồi bấm nút trên trang "
                "hiện ra, hoặc bấm nút “Hủy đăng ký” mà chương trình email của bạn hiện cạnh "
                "người gửi."
            ),
            "cut_unsubscribe_title": "Liên kết hủy đăng ký bị thiếu một phần",
            "cut_unsubscribe_body": (
                "Liên kết này ngắn hơn liên kết ở cuối bản tin: có lẽ nó bị ngắt xuống dòng "
                "trong email và chỉ phần đầu được mở. Hãy chép trọn cả liên kết (kể cả phần "
                "ở dòng dưới) vào trình duyệt, hoặc bấm nút “Hủy đăng ký” mà chương trình "
                "email của bạn hiện cạnh người gửi."
            ),
            "bad_unsubscribe_title": "Liên kết hủy đăng ký không hợp lệ",
            "bad_unsubscribe_body": (
                "Liên kết này bị thiếu hoặc bị thay đổi. Hãy dùng đúng liên kết "
                "ở cuối một bản tin bạn đã nhận."
            ),
            "error": "Lỗi",
            "error_400": "Yêu cầu không hợp lệ.",
            "error_403_title": "Biểu mẫu đã hết hạn",
            "error_403": (
                "Biểu mẫu này đã hết hạn hoặc được gửi từ một trang khác. "
                "Hãy tải lại trang đăng ký và thử lại."
            ),
            "error_404_title": "Không tìm thấy trang",
            "error_404": "Trang bạn tìm không có ở đây.",
            "error_405_title": "Phương thức không được hỗ trợ",
            "error_405": "Địa chỉ này không nhận loại yêu cầu đó.",
            "error_413_title": "Yêu cầu quá lớn",
            "error_413": "Dữ liệu gửi lên quá lớn.",
            "error_429_title": "Quá nhiều yêu cầu",
            "error_429": "Bạn đã gửi quá nhiều yêu cầu. Hãy thử lại sau một phút.",
            "error_500_title": "Lỗi máy chủ",
            "error_500": "Đã có lỗi ở phía chúng tôi. Hãy thử lại sau ít phút.",
            "error_503_title": "Hệ thống đang bận",
            "error_503": "Hệ thống đang bận trong giây lát. Hãy thử lại sau ít giây.",
        },
        "en": {
            "subscribe_title": "Subscribe to the newsletter",
            "subscribe_intro": (
                "One email a day with the latest news. "
                "You can unsubscribe at any time from the link in every email."
            ),
            "invalid_email": "This email address is not valid. Please check it and try again.",
            "sent_title": "Check your inbox",
            "sent_body": (
                "We have received a sign-up for {email}. If the address needs confirming, "
                "an email with a confirmation link will arrive within a few minutes; "
                "the link is valid for {hours} hours."
            ),
            "sent_hint": "No email? Look in your spam or promotions folder.",
            "confirm_ask_title": "Confirm your subscription",
            "confirm_ask_body": "Press the button below to start receiving the newsletter.",
            "confirm_ask_button": "Confirm subscription",
            "confirmed_title": "Subscription confirmed",
            # Not "tomorrow morning": `send` may run later today, and the next digest is the
            # first (a day without news has none).
            "confirmed_body": (
                "Thank you! The newsletter will reach your inbox from its next issue."
            ),
            "bad_confirm_title": "This confirmation link cannot be used",
            "bad_confirm_body": (
                "The link has expired, was altered, or is no longer valid. "
                "Please sign up again to get a new link."
            ),
            "cut_confirm_title": "This confirmation link is incomplete",
            "cut_confirm_body": (
                "The link is shorter than the one we sent: it was probably split over two "
                "lines in the email, and only the first part was opened. Press the button in "
                "the confirmation email, or copy the whole link (the part on the next line "
                "too) into your browser."
            ),
            "expired_confirm_title": "This confirmation link has expired",
            "expired_confirm_body": (
                "A confirmation link is valid for {hours} hours. The sign-up was not confirmed "
                "in time, so it has lapsed; please sign up again to get a new link."
            ),
            "unsubscribe_title": "Unsubscribe",
            "unsubscribe_body": "Press the button below to stop receiving the newsletter by email.",
            "unsubscribe_button": "Unsubscribe",
            "unsubscribed_title": "You have unsubscribed",
            "unsubscribed_body": (
                "You will not receive the newsletter any more. "
                "If you change your mind, you can sign up again at any time."
            ),
            "subscribe_again": "Sign up again",
            "how_unsubscribe_title": "How to unsubscribe",
            "how_unsubscribe_body": (
                "Every newsletter carries its own unsubscribe link at the bottom. "
                "Open that link in an email you received and press the button on the page "
                "it opens, or use the Unsubscribe button your mail program shows by the sender."
            ),
            "cut_unsubscribe_title": "This unsubscribe link is incomplete",
            "cut_unsubscribe_body": (
                "The link is shorter than the one at the bottom of the newsletter: it was "
                "probably split over two lines in the email, and only the first part was "
                "opened. Copy the whole link (the part on the next line too) into your "
                "browser, or use the Unsubscribe button your mail program shows by the sender."
            ),
            "bad_unsubscribe_title": "This unsubscribe link is not valid",
            "bad_unsubscribe_body": (
                "The link is incomplete or was altered. Please use the link "
                "at the bottom of a newsletter you received."
            ),
            "error": "Error",
            "error_400": "The request is not valid.",
            "error_403_title": "This form has expired",
            "error_403": (
                "The form has expired or was sent from another site. "
                "Please reload the sign-up page and try again."
            ),
            "error_404_title": "Page not found",
            "error_404": "The page you are looking for is not here.",
            "error_405_title": "Method not allowed",
            "error_405": "This address does not accept that kind of request.",
            "error_413_title": "Request too large",
            "error_413": "The data sent is too large.",
            "error_429_title": "Too many requests",
            "error_429": "You have sent too many requests. Please try again in a minute.",
            "error_500_title": "Server error",
            "error_500": "Something went wrong on our side. Please try again in a few minutes.",
            "error_503_title": "Busy for a moment",
            "error_503": "We are busy for a moment. Please try again in a few seconds.",
        },
    },
}


def strings(section: str, lang: str) -> dict[str, str]:
    """The strings of `section` in `lang`; KeyError when either is unknown."""
    return STRINGS[section][lang]


# --------------------------------------------------------------------------- dates
#
# A date as the reader's papers write it. Vietnamese ones: "Thứ Sáu, 1/11/2024, 09:15
# (GMT+7)" (VnExpress, Tuổi Trẻ; Babel's long form, "1 tháng 11, 2024", is no paper's);
# English ones: "Friday, November 1, 2024, 9:15 AM (GMT+7)". The zone goes with a time of
# day, so a reader abroad knows whose 09:15 it is. Babel is imported on first use: the
# commands that render nothing do not load it (tests/test_startup.py).

# An article's day, and a digest's (an English paper dates an issue without the weekday).
_DAY_PATTERNS = {"vi": "EEEE, d/M/y", "en": "EEEE, MMMM d, y"}
_ISSUE_PATTERNS = {"vi": "EEEE, d/M/y", "en": "MMMM d, y"}
_CLOCK_PATTERNS = {"vi": "HH:mm"}  # else CLDR's short time ("9:15 AM")


def format_published(published: datetime, *, lang: str, tz: tzinfo, with_time: bool) -> str:
    """An article's publish date for a reader of `lang`: the day ("Thứ Năm, 31/10/2024"),
    and `with_time` (the dump gave one) the time of day with its zone ("Thứ Năm, 31/10/2024,
    09:15 (GMT+7)", "Thursday, October 31, 2024, 9:15 AM (GMT+7)")."""
    local = published.astimezone(tz)
    day = _day_text(local.date(), lang)
    if not with_time:
        return day
    clock = _clock_text(local.time().replace(second=0, microsecond=0), lang)
    return f"{day}, {clock} ({_zone_text(local.utcoffset())})"


def format_issue_day(day: date, lang: str) -> str:
    """A digest's day for a reader of `lang`: "Thứ Sáu, 1/11/2024", "November 1, 2024"."""
    return _format_date(day, _ISSUE_PATTERNS.get(lang, "long"), lang)


# Many articles share a day, and times of day repeat: Babel formats each once.
# A day as a story's text names it: "1/11" in Vietnamese news, "November 1" in English.
_TEXT_DAY_PATTERNS = {"vi": "d/M", "en": "MMMM d"}


def format_text_day(day: date, lang: str) -> str:
    """A day as news text names it, without the year: "1/11", "November 1"."""
    return _format_date(day, _TEXT_DAY_PATTERNS.get(lang, "MMMM d"), lang)


@functools.lru_cache(maxsize=2048)
def _day_text(day: date, lang: str) -> str:
    return _format_date(day, _DAY_PATTERNS.get(lang, "full"), lang)


@functools.lru_cache(maxsize=2048)
def _clock_text(clock: time, lang: str) -> str:
    from babel.dates import format_time

    return str(format_time(clock, _CLOCK_PATTERNS.get(lang, "short"), locale=lang))


def _format_date(day: date, pattern: str, lang: str) -> str:
    from babel.dates import format_date

    return str(format_date(day, pattern, locale=lang))


@functools.lru_cache(maxsize=64)
def _zone_text(offset: timedelta | None) -> str:
    """ "GMT+7", "GMT+5:30", "GMT-3", "GMT": as Vietnamese papers name their zone."""
    minutes = round((offset or timedelta()).total_seconds() / 60)
    if not minutes:
        return "GMT"
    sign, minutes = ("+" if minutes > 0 else "-"), abs(minutes)
    hours, rest = divmod(minutes, 60)
    return f"GMT{sign}{hours}" + (f":{rest:02d}" if rest else "")
