"""The MFA marks of an account's state: one bit each of the stored ``flags`` column.

The transition rule (:mod:`exporter.tracker.transition`) sets and reads them; the state
store only keeps them and groups by them. They live apart from both so that the store
needs nothing of the tracker package (which imports the store).
"""

OTP = 1
"""``flags`` bit: the account is an OTP-loop suspect."""
RELAPSED = 2
"""``flags`` bit: it fell back to MFA right after a fix (and is still there)."""
AFTER_FIX = 4
"""``flags`` bit: its last distinct attempt succeeded after an MFA streak."""
