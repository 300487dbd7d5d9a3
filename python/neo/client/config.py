"""The ZConfig factory of the ``<NEOStorage>`` section (``component.xml``)."""
from ZODB.config import BaseConfig


def compress(value):
    """``compress``: a boolean, or ``zlib`` / ``zlib=LEVEL`` (zlib at its default level)."""
    v = value.strip().lower()
    if v in ('on', 'yes', 'true', '1', 'zlib'):
        return True
    if v in ('off', 'no', 'false', '0'):
        return False
    if v.startswith('zlib='):
        level = v[5:]
        if not (level.isdigit() and 0 <= int(level) <= 9):
            raise ValueError('compress: zlib level must be 0 to 9, not %r' % level)
        # The client compresses at zlib's default level whatever the level asked.
        return int(level) != 0
    raise ValueError('compress: expected a boolean or zlib[=LEVEL], not %r' % value)


class NeoStorage(BaseConfig):

    def open(self):
        from .Storage import Storage
        c = self.config
        options = {
            'read_only': c.read_only,
            'compress': c.compress,
            'cache_size': c.cache_size,
        }
        for key in ('logfile', 'dynamic_master_list', 'ca', 'cert', 'key'):
            value = getattr(c, key)
            if value is not None:
                options[key] = value
        if c.ignore_wrong_checksum:
            options['ignore_wrong_checksum'] = True
        return Storage(c.master_nodes, c.name, **options)
