// A small reader and writer for NumPy's .npy files, enough to pass arrays between Python and Node.js.
//
// Supported: format versions 1.0, 2.0 and 3.0 headers, C order (fortran_order: False), little-endian
// dtypes  <f4 (float32), <f8 (float64), <i8 (int64), <i4 (int32), |u1 (uint8) and |b1 (bool).
//
//   const { readNpy, writeNpy } = require('./npy');
//   const { dtype, shape, data } = readNpy(fs.readFileSync('x.npy'));   // data: a TypedArray
//   fs.writeFileSync('y.npy', writeNpy({ dtype: '<f4', shape: [2, 3], data: new Float32Array(6) }));
//
// In Python:  np.save('x.npy', np.ascontiguousarray(x, dtype=np.float32))   and   np.load('y.npy').
//
// The format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html

'use strict';

const os = require('node:os');

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // "\x93NUMPY"
const ALIGN = 64; // NumPy pads the header so that the data starts at a multiple of 64 bytes

// .npy dtype  <->  TypedArray, and the ONNX Runtime tensor type of the same elements.
const DTYPES = {
  '<f4': { array: Float32Array, ort: 'float32' },
  '<f8': { array: Float64Array, ort: 'float64' },
  '<i8': { array: BigInt64Array, ort: 'int64' },
  '<i4': { array: Int32Array, ort: 'int32' },
  '|u1': { array: Uint8Array, ort: 'uint8' },
  '|b1': { array: Uint8Array, ort: 'bool' },
};

// TypedArrays use the machine's byte order; every platform ONNX Runtime ships for is little-endian.
if (os.endianness() !== 'LE') {
  throw new Error('npy.js: this machine is big-endian; only little-endian machines are supported');
}

/** Parse a .npy file's bytes (a Buffer or Uint8Array) into { dtype, shape, data }. */
function readNpy(bytes) {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < 10 || !buf.subarray(0, 6).equals(MAGIC)) {
    throw new Error('not a .npy file (the magic string \\x93NUMPY is missing)');
  }
  const major = buf[6];
  let headerLength;
  let headerStart;
  if (major === 1) {
    headerLength = buf.readUInt16LE(8);
    headerStart = 10;
  } else if (major === 2 || major === 3) {
    if (buf.length < 12) throw new Error('truncated .npy header');
    headerLength = buf.readUInt32LE(8);
    headerStart = 12;
  } else {
    throw new Error(`unsupported .npy format version ${major}.${buf[7]}`);
  }
  const dataStart = headerStart + headerLength;
  if (dataStart > buf.length) throw new Error('truncated .npy header');
  // Version 3.0 only differs from 2.0 by allowing UTF-8 in the header (field names of structured dtypes).
  const header = buf.toString(major === 3 ? 'utf8' : 'latin1', headerStart, dataStart);

  // The header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header);
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shapeText) throw new Error(`cannot parse the .npy header: ${header.trim()}`);

  const dtype = descr[1];
  if (!(dtype in DTYPES)) {
    throw new Error(`unsupported .npy dtype '${dtype}' (supported: ${Object.keys(DTYPES).join(' ')})`);
  }
  if (fortran[1] === 'True') {
    throw new Error('the .npy file is in Fortran order; save it with np.save(path, np.ascontiguousarray(x))');
  }
  const shape = shapeText[1]
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map((s) => {
      const n = Number(s.replace(/L$/, '')); // Python 2 wrote longs as 3L
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`bad dimension '${s}' in the .npy shape`);
      return n;
    });

  const { array: ArrayType } = DTYPES[dtype];
  const size = shape.reduce((a, b) => a * b, 1);
  const byteLength = size * ArrayType.BYTES_PER_ELEMENT;
  if (dataStart + byteLength > buf.length) {
    throw new Error(`the .npy file is truncated: shape (${shape.join(', ')}) needs ${byteLength} bytes of data`);
  }
  // Copy the data into a fresh ArrayBuffer: the data need not be aligned for the TypedArray within `bytes`.
  const start = buf.byteOffset + dataStart;
  const data = new ArrayType(buf.buffer.slice(start, start + byteLength));
  return { dtype, shape, data };
}

/** Serialise { dtype, shape, data } (data: a TypedArray of that dtype) into the bytes of a .npy file. */
function writeNpy({ dtype, shape, data }) {
  if (!(dtype in DTYPES)) {
    throw new Error(`unsupported .npy dtype '${dtype}' (supported: ${Object.keys(DTYPES).join(' ')})`);
  }
  const { array: ArrayType } = DTYPES[dtype];
  if (!(data instanceof ArrayType)) {
    throw new Error(`dtype '${dtype}' needs a ${ArrayType.name}, got ${data?.constructor?.name}`);
  }
  const size = shape.reduce((a, b) => a * b, 1);
  if (size !== data.length) {
    throw new Error(`shape [${shape.join(', ')}] holds ${size} elements, the data has ${data.length}`);
  }
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${dtype}', 'fortran_order': False, 'shape': ${shapeText}, }`;

  // Version 1.0 stores the header length in 2 bytes; a longer header (a huge number of dimensions) needs 2.0.
  let version = 1;
  let prefix = 10;
  if (header.length + 1 + prefix > 0xffff) {
    version = 2;
    prefix = 12;
  }
  // Pad with spaces and end with a newline so that magic + length + header is a multiple of ALIGN.
  const total = Math.ceil((prefix + header.length + 1) / ALIGN) * ALIGN;
  header = header.padEnd(total - prefix - 1, ' ') + '\n';

  const head = Buffer.alloc(prefix);
  MAGIC.copy(head, 0);
  head[6] = version;
  head[7] = 0;
  if (version === 1) head.writeUInt16LE(header.length, 8);
  else head.writeUInt32LE(header.length, 8);
  const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return Buffer.concat([head, Buffer.from(header, 'latin1'), body]);
}

module.exports = { readNpy, writeNpy, DTYPES };
