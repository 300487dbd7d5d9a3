"""The ``neo://`` zodburi resolver (entry point ``zodburi.resolvers``)::

    neo://name@host:port,host:port?read_only=true&compress=false&cache_size=50MB

The user part is the cluster's name, the hosts are its masters; options are
``<NEOStorage>``'s keys (with underscores), and zodburi's database keys
(``database_name``, ``connection_cache_size``, ...) are passed on to ZODB.DB.
``neos://`` (TLS) is refused until the client supports TLS.
"""
from urllib.parse import parse_qsl
from urllib.parse import unquote
from urllib.parse import urlsplit

_BOOL = ('read_only', 'compress', 'ignore_wrong_checksum')
_STRING = ('logfile', 'dynamic_master_list', 'ca', 'cert', 'key')


def _boolean(key, value):
    v = value.strip().lower()
    if v in ('1', 'on', 'yes', 'true'):
        return True
    if v in ('0', 'off', 'no', 'false'):
        return False
    raise ValueError('%s: expected a boolean, not %r' % (key, value))


def _byte_size(key, value):
    v = value.strip().upper()
    for suffix, factor in (('KB', 1 << 10), ('MB', 1 << 20), ('GB', 1 << 30)):
        if v.endswith(suffix):
            v, mul = v[:-2].strip(), factor
            break
    else:
        mul = 1
    if not v.isdigit():
        raise ValueError('%s: expected a size (bytes, KB, MB, GB), not %r' % (key, value))
    return int(v) * mul


def parse(uri):
    """``neo://`` URI -> (master addresses, cluster name, Storage options, the other
    query options for ZODB.DB)."""
    scheme = uri.split(':', 1)[0].lower()
    if scheme == 'neos':
        raise ValueError('neos:// (TLS) is not supported by this client yet')
    if scheme != 'neo':
        raise ValueError('not a neo:// URI: %r' % uri)
    u = urlsplit(uri)
    name, sep, hosts = u.netloc.rpartition('@')
    if not sep or not name:
        raise ValueError('%r: the cluster name is missing (neo://name@host:port)' % uri)
    masters = [h for h in hosts.split(',') if h]
    if not masters:
        raise ValueError('%r: no master address' % uri)
    options = {}
    dbkw = {}
    for key, value in parse_qsl(u.query, keep_blank_values=True):
        if key in _BOOL:
            options[key] = _boolean(key, value)
        elif key == 'cache_size':
            options[key] = _byte_size(key, value)
        elif key in _STRING:
            options[key] = value
        else:
            dbkw[key] = value
    return masters, unquote(name), options, dbkw


def resolve_uri(uri):
    """zodburi's resolver: (storage factory, keyword arguments for ZODB.DB)."""
    masters, name, options, dbkw = parse(uri)

    def factory():
        from .Storage import Storage
        return Storage(masters, name, **options)

    return factory, dbkw
