/*
 * A stand-in for Windows' bcryptprimitives.dll, for Wine 8.0 only.
 *
 * Rust >= 1.78 (std) and getrandom 0.3 import ProcessPrng from
 * bcryptprimitives.dll. Wine 8.0 does not ship that DLL, so every Rust
 * program exits at load time with status 53 and prints nothing. This stub
 * exports ProcessPrng on top of SystemFunction036 (RtlGenRandom, advapi32),
 * which Wine does implement. Never install it on real Windows.
 *
 * Built and installed by ci/wine/install-stub.sh.
 */
#include <windows.h>

/* RtlGenRandom; the ntsecapi.h declaration hides it behind a macro. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/* Fills `data` with `len` random bytes; always returns TRUE, as on Windows. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            /* ProcessPrng cannot fail on Windows; neither may its callers'
               assumptions here. */
            RaiseFailFastException(NULL, NULL, 0);
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
